"""docs/alembic.md followed as a new user would: ``alembic init`` in an empty directory, the
page's alembic.ini lines, env.py and flows written as shown, then the walkthrough's commands with
``DATABASE_URL`` exported. Not the example project: its files are checked against the page too."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.config import Config
from sqlalchemy.engine import URL

from alembic_pgflow import configure_database_url
from tests.helpers import database, docs

PAGE = "alembic.md"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "alembic_shop"


def _shell(commands: list[str], cwd: Path, environment: dict[str, str]) -> str:
    script = "set -euo pipefail\n" + "\n".join(commands)
    result = subprocess.run(
        ["bash", "-c", script],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, f"{script}\n--- output:\n{result.stdout}{result.stderr}"
    return result.stdout + result.stderr


def _apply_ini_lines(ini: Path, lines: str) -> None:
    """Put the page's keys into [alembic], replacing the same keys (with continuations) there."""
    keys = set(re.findall(r"^([\w.]+) =", lines, re.MULTILINE))
    kept: list[str] = []
    section = ""
    skipping = False
    for line in ini.read_text().splitlines():
        if line.startswith("["):
            section = line
        key = re.match(r"^([\w.]+) =", line)
        if section == "[alembic]" and key:
            skipping = key.group(1) in keys
        elif skipping and not line.startswith((" ", "\t")):
            skipping = False
        if not skipping:
            kept.append(line)
        if line == "[alembic]":
            kept.extend(lines.splitlines())
    ini.write_text("\n".join(kept) + "\n")


@pytest.mark.slow
def test_the_alembic_page_works_from_alembic_init(
    tmp_path: Path, pgflow_empty_database: URL
) -> None:
    environment = {
        **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    setup = docs.console(docs.block(PAGE, "Setup", "console"))
    _shell(setup.commands, tmp_path, environment)
    project = tmp_path / "shop-app"
    assert (project / "migrations" / "env.py").exists()

    _apply_ini_lines(project / "alembic.ini", docs.block(PAGE, "alembic.ini", "ini"))
    (project / "migrations" / "env.py").write_text(docs.block(PAGE, "migrations/env.py", "python"))
    (project / "shop").mkdir()
    (project / "shop" / "__init__.py").write_text("")
    (project / "shop" / "flows.py").write_text(docs.block(PAGE, "The flows", "python"))

    walkthrough = docs.console(docs.block(PAGE, "Walkthrough", "console"))
    ours = database.libpq_url(pgflow_empty_database)
    commands = [
        re.sub(r"^export DATABASE_URL=\S+", f"export DATABASE_URL={ours}", c)
        for c in walkthrough.commands
    ]
    assert commands[0] == f"export DATABASE_URL={ours}", "the walkthrough starts with the export"
    output = _shell(commands, project, environment)
    for line in walkthrough.output:
        if "…" not in line:
            assert line in output, line

    assert database.scalar(
        pgflow_empty_database, "SELECT array_agg(flow_slug ORDER BY flow_slug) FROM pgflow.flows"
    ) == ["process_order", "send_receipt"]


def test_without_a_database_the_page_s_env_py_names_the_fix(tmp_path: Path) -> None:
    """alembic init's placeholder URL and no DATABASE_URL: one line saying what to export."""
    environment = {
        **{k: v for k, v in os.environ.items() if k != "DATABASE_URL"},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    _shell(docs.console(docs.block(PAGE, "Setup", "console")).commands, tmp_path, environment)
    project = tmp_path / "shop-app"
    _apply_ini_lines(project / "alembic.ini", docs.block(PAGE, "alembic.ini", "ini"))
    (project / "migrations" / "env.py").write_text(docs.block(PAGE, "migrations/env.py", "python"))
    (project / "shop").mkdir()
    (project / "shop" / "__init__.py").write_text("")
    (project / "shop" / "flows.py").write_text(docs.block(PAGE, "The flows", "python"))
    result = subprocess.run(
        ["alembic", "upgrade", "heads"],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "Traceback" not in output
    assert (
        "FAILED: sqlalchemy.url in alembic.ini: unsupported database URL scheme 'driver'" in output
    )
    assert "or export DATABASE_URL=postgresql://" in output


def test_the_example_project_uses_the_page_s_env_py_and_flows() -> None:
    assert (EXAMPLE / "migrations" / "env.py").read_text() == docs.block(
        PAGE, "migrations/env.py", "python"
    )
    assert (EXAMPLE / "shop" / "flows.py").read_text() == docs.block(PAGE, "The flows", "python")


def test_configure_database_url_prefers_database_url_and_keeps_percent_escapes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = Config()
    config.set_main_option("sqlalchemy.url", "driver://user:pass@localhost/dbname")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:p%40ss@db.internal:5433/shop")
    assert configure_database_url(config) == "postgresql+psycopg://app:***@db.internal:5433/shop"
    assert (
        config.get_main_option("sqlalchemy.url")
        == "postgresql+psycopg://app:p%40ss@db.internal:5433/shop"
    )
