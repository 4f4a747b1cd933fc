"""``pgflow db install|status`` as a user runs them: separate processes, real exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from pgflow._devserver import DevServer, start_embedded
from pgflow.schema import PgmqMode, status
from tests.helpers import database

PGFLOW = [sys.executable, "-m", "pgflow"]


def pgflow_cli(*args: str, url: URL | str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if url is not None:
        env["DATABASE_URL"] = url if isinstance(url, str) else database.libpq_url(url)
    return subprocess.run(
        [*PGFLOW, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def test_install_and_status_from_the_command_line(pgflow_empty_database: URL) -> None:
    pending = pgflow_cli("db", "status", "--check", url=pgflow_empty_database)
    assert pending.returncode == 1
    assert "pending" in pending.stdout
    installed = pgflow_cli("db", "install", url=pgflow_empty_database)
    assert installed.returncode == 0, installed.stderr
    assert "applied  upstream/20251104080523_pgflow_upgrade_pgmq_1_5_1.sql" in installed.stdout
    again = pgflow_cli("db", "install", url=pgflow_empty_database)
    assert again.returncode == 0
    assert "up to date" in again.stdout
    done = pgflow_cli("db", "status", "--check", url=pgflow_empty_database)
    assert done.returncode == 0
    assert "pgflow core   0.8.1 (12/12 migrations recorded)" in done.stdout
    assert "pending       nothing" in done.stdout


def test_two_concurrent_installs_both_succeed_and_one_does_the_work(
    pgflow_empty_database: URL,
) -> None:
    env = {**os.environ, "DATABASE_URL": database.libpq_url(pgflow_empty_database)}
    processes = [
        subprocess.Popen(
            [*PGFLOW, "db", "install"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in processes]
    assert [code for code, _, _ in results] == [0, 0], results
    outputs = [out for _, out, _ in results]
    assert sum("up to date" in out for out in outputs) == 1
    assert sum("applied  upstream/20250429164909_pgflow_initial.sql" in out for out in outputs) == 1
    assert status(pgflow_empty_database).up_to_date


def test_unreachable_server_exits_3_with_what_to_check() -> None:
    result = pgflow_cli("db", "install", url="postgresql://postgres@127.0.0.1:1/nowhere")
    assert result.returncode == 3
    assert "cannot connect to postgresql://postgres@127.0.0.1:1/nowhere" in result.stderr
    assert "DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_database_configured_exits_2_naming_the_setting() -> None:
    # A configuration mistake that a restart cannot fix: 2, "do not restart" (docs/deployment.md).
    result = pgflow_cli("db", "status")
    assert result.returncode == 2
    assert "set DATABASE_URL" in result.stderr


@pytest.fixture
def role_without_create(pgflow_empty_database: URL) -> Iterator[URL]:
    role = f"pgflow_nocreate_{uuid.uuid4().hex[:8]}"
    database.run_sql(pgflow_empty_database, f'CREATE ROLE "{role}" LOGIN')
    try:
        yield pgflow_empty_database.set(username=role, password=None)
    finally:
        database.run_sql(pgflow_empty_database, f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


def test_role_without_create_privilege_is_told_the_fix_and_nothing_changes(
    role_without_create: URL, pgflow_empty_database: URL
) -> None:
    result = pgflow_cli("db", "install", url=role_without_create)
    assert result.returncode == 1
    assert "may not create schemas" in result.stderr
    assert "GRANT CREATE ON DATABASE" in result.stderr
    assert database.schemas(pgflow_empty_database) == set()


def test_tampered_record_exits_1_and_applies_nothing(pgflow_database: URL) -> None:
    database.run_sql(
        pgflow_database,
        "UPDATE pgflow_python.installed SET sha256 = 'abc'"
        " WHERE name LIKE '%_pgflow_initial.sql';"
        " DELETE FROM pgflow_python.installed WHERE component = 'extension';",
    )
    result = pgflow_cli("db", "install", url=pgflow_database)
    assert result.returncode == 1
    assert "changed file under an applied name is refused" in result.stderr
    remaining = database.scalar(
        pgflow_database,
        "SELECT count(*) FROM pgflow_python.installed WHERE component = 'extension'",
    )
    assert remaining == 0


@pytest.mark.slow
def test_embedded_server_fallback_installs_with_registered_pgmq() -> None:
    """Where no server runs, the embedded PostgreSQL takes over; its extension dir is writable."""
    server: DevServer = start_embedded()
    assert server.kind == "embedded"
    result = pgflow_cli("db", "install", url=server.url)
    assert result.returncode == 0, result.stderr
    assert "pgmq mode: registered" in result.stdout
    snapshot = status(server.url)
    assert snapshot.pgmq_mode is PgmqMode.REGISTERED
    assert snapshot.up_to_date


def test_demo_example_runs(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "sql_only_flow.py"
    result = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "run completed: {'card': {'to': 'Ada Lovelace'" in result.stdout


def test_uninstall_asks_for_confirmation_then_removes_what_install_added(
    pgflow_empty_database: URL,
) -> None:
    assert pgflow_cli("db", "install", url=pgflow_empty_database).returncode == 0
    refused = pgflow_cli("db", "uninstall", url=pgflow_empty_database)
    assert refused.returncode == 2
    assert refused.stderr.strip().endswith("run it again with --yes to do it")
    assert database.schemas(pgflow_empty_database) == {
        "pgflow",
        "pgflow_python",
        "pgmq",
        "realtime",
    }
    removed = pgflow_cli("db", "uninstall", "--yes", url=pgflow_empty_database)
    assert removed.returncode == 0, removed.stderr
    assert database.schemas(pgflow_empty_database) == set()
    assert removed.stdout.startswith("pgflow schema removed")
    removed_twice = pgflow_cli("db", "uninstall", "--yes", url=pgflow_empty_database)
    assert removed_twice.returncode == 0, removed_twice.stderr
    assert removed_twice.stdout.startswith("nothing to remove: pgflow is not installed in ")
    again = pgflow_cli("db", "install", url=pgflow_empty_database)
    assert again.returncode == 0, again.stderr
    assert status(pgflow_empty_database).up_to_date
