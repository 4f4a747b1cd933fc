"""Shell blocks of docs/ run as written, their output compared with what the page shows
(``…`` stands for lines left out): installation.md, defining-flows.md, dashboard.md."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from sqlalchemy.engine import URL

from tests.helpers import database, docs

ROOT = Path(__file__).resolve().parents[2]


def environment() -> dict[str, str]:
    """This interpreter's ``pgflow`` and ``python`` first on PATH; no DATABASE_URL of the caller;
    80 columns, as a terminal's default, for help texts."""
    return {
        **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "COLUMNS": "80",
    }


def test_installing_and_removing_the_schema_as_shown(pgflow_empty_database: URL) -> None:
    ours = database.libpq_url(pgflow_empty_database)
    for section in ("Installing the schema", "Removing the schema"):
        block = docs.block("installation.md", section, "console")
        docs.run_console(
            block, cwd=ROOT, environment=environment() | {"DATABASE_URL": ours}, url=ours
        )
    assert database.scalar(pgflow_empty_database, "SELECT to_regnamespace('pgflow') IS NULL")


def test_compile_prints_what_defining_flows_shows() -> None:
    block = docs.block("defining-flows.md", "Compiling to SQL", "console")
    docs.run_console(block, cwd=ROOT, environment=environment())


def test_dashboard_help_is_as_shown() -> None:
    help_blocks = [
        b.text
        for b in docs.blocks("dashboard.md", "console")
        if b.text.startswith("$ pgflow dashboard --help\n")
    ]
    assert len(help_blocks) == 1
    docs.run_console(help_blocks[0], cwd=ROOT, environment=environment())
