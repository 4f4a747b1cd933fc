"""examples/alembic_shop (docs/alembic.md's finished project), driven by the ``alembic`` command."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from alembic_pgflow import version_location
from tests.helpers import database

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "alembic_shop"


@pytest.mark.slow
def test_the_documented_walkthrough(tmp_path: Path, pgflow_empty_database: URL) -> None:
    shutil.copytree(EXAMPLE, tmp_path / "shop", ignore=shutil.ignore_patterns("__pycache__"))
    root = tmp_path / "shop"
    environment = {**os.environ, "DATABASE_URL": database.libpq_url(pgflow_empty_database)}

    def alembic(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "alembic", *args],
            cwd=root,
            env=environment,
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    alembic("upgrade", "heads")  # installs the pgflow schema
    alembic("revision", "-m", "create tables")  # no --head: still lands in the shop's own line
    alembic("upgrade", "heads")
    output = alembic("revision", "--autogenerate", "-m", "add shop flows")
    assert "Detected new flow 'process_order'" in output
    alembic("upgrade", "heads")
    assert "No new upgrade operations detected." in alembic("check")

    revisions = sorted((root / "migrations" / "versions").glob("*.py"))
    assert len(revisions) == 2
    flows = next(p for p in revisions if p.name.endswith("_add_shop_flows.py")).read_text()
    assert 'op.create_flow(\n        {\n            "slug": "process_order",' in flows
    assert "depends_on: Union[str, Sequence[str], None] = 'pgflow_0002'" in flows
    assert sorted(p.name for p in Path(version_location()).glob("*.py")) == [
        "pgflow_0001_schema.py",
        "pgflow_0002_operations.py",
    ]
    assert database.scalar(
        pgflow_empty_database, "SELECT array_agg(flow_slug ORDER BY flow_slug) FROM pgflow.flows"
    ) == ["process_order", "send_receipt"]


def test_shipped_schema_revisions_form_one_chain() -> None:
    """Only pgflow_NNNN files in alembic_pgflow/versions, each revising the previous one."""
    files = sorted(p for p in Path(version_location()).glob("*.py"))
    previous = None
    for number, path in enumerate(files, start=1):
        text = path.read_text()
        assert re.fullmatch(rf"pgflow_{number:04d}_\w+\.py", path.name), path.name
        assert f'revision: str = "pgflow_{number:04d}"' in text
        assert f"down_revision: str | None = {previous!r}".replace("'", '"') in text
        previous = f"pgflow_{number:04d}"
    assert files, "the schema revision is missing"
