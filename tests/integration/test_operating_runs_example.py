"""examples/operating_runs.py runs as docs/operations.md shows, and every Python block of that
page is taken verbatim from the example."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest

import operating_runs
from tests.helpers import docs

ROOT = Path(__file__).resolve().parents[2]
OPENING = "Operating runs: cancel, resume, retry, idempotent starts, pruning"


def test_the_operating_runs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    anyio.run(operating_runs.main)
    shown = docs.console(docs.block("operations.md", OPENING, "console"))
    assert shown.commands == ["python examples/operating_runs.py"]
    assert capsys.readouterr().out.splitlines() == shown.output
    assert "pruned 2 notify run(s) and 2 task(s)" in shown.output  # the page shows it all


def test_the_page_shows_the_example_verbatim() -> None:
    page = (ROOT / "docs" / "operations.md").read_text()
    example = (ROOT / "examples" / "operating_runs.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    assert blocks, "docs/operations.md has no Python blocks"
    for block in blocks:
        assert block in example, f"this block of docs/operations.md is not in the example:\n{block}"
