"""Every Python sample in docs/observability.md runs verbatim, each in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.helpers.database import libpq_url

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "observability.md").read_text(), re.S)


def test_the_page_has_its_samples() -> None:
    assert len(SAMPLES) == 7


@pytest.mark.parametrize("sample", SAMPLES, ids=[f"sample{n}" for n in range(len(SAMPLES))])
def test_the_sample_runs(sample: str, pgflow_database: URL) -> None:
    result = subprocess.run(
        [sys.executable, "-c", sample],
        env={**os.environ, "DATABASE_URL": libpq_url(pgflow_database)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
