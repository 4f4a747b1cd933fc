"""The SQL the installer applies: pinned, hash checked, and the one declared transformation."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pgflow._sql import parse_named_queries, psycopg_text, query_names, sql_text
from pgflow.errors import SchemaFilesError
from pgflow.schema import _sources

ROOT = Path(__file__).resolve().parents[2]


def test_upstream_migrations_are_the_pinned_twelve_in_file_name_order() -> None:
    migrations = _sources.upstream_migrations()
    names = [m.name for m in migrations]
    assert len(names) == 12
    assert names == sorted(names)
    assert names[0] == "20250429164909_pgflow_initial.sql"
    assert _sources.upstream_version() == "0.8.1"


def test_a_modified_upstream_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    shutil.copytree(_sources.upstream_directory(), tmp_path / "upstream")
    target = tmp_path / "upstream" / "20250614124241_pgflow_add_realtime.sql"
    target.write_text(target.read_text() + "\n-- tampered\n")
    with pytest.raises(SchemaFilesError, match=r"20250614124241.*does not match its pinned sha256"):
        _sources.upstream_migrations(tmp_path / "upstream")


def test_missing_upstream_files_name_the_command_that_fetches_them(tmp_path: Path) -> None:
    with pytest.raises(SchemaFilesError, match=r"make setup"):
        _sources.upstream_migrations(tmp_path)


def test_plain_pgmq_skips_exactly_one_statement_of_one_migration() -> None:
    migrations = _sources.upstream_migrations()
    transformed = [_sources.without_pgmq_extension(m) for m in migrations]
    changed = [(a, b) for a, b in zip(migrations, transformed, strict=True) if a.sql != b.sql]
    assert len(changed) == 1
    original, plain = changed[0]
    assert original.name == _sources.PLAIN_PGMQ_SKIPPED_MIGRATION
    assert _sources.PLAIN_PGMQ_SKIPPED_STATEMENT in original.sql
    assert "CREATE EXTENSION" not in plain.sql
    removed = [line for line in original.sql.splitlines() if line not in plain.sql.splitlines()]
    assert removed == [_sources.PLAIN_PGMQ_SKIPPED_STATEMENT]


def test_the_skip_refuses_a_migration_without_the_statement() -> None:
    initial = _sources.SqlFile(_sources.PLAIN_PGMQ_SKIPPED_MIGRATION, "CREATE SCHEMA pgflow;")
    with pytest.raises(SchemaFilesError, match="expected exactly one"):
        _sources.without_pgmq_extension(initial)


def test_bundled_pgmq_sql_is_the_pinned_release() -> None:
    version, sql = _sources.bundled_pgmq()
    assert version == "1.13.0"
    assert sql.name == "pgmq--1.13.0.sql"
    assert "CREATE TABLE IF NOT EXISTS pgmq.meta" in sql.sql


def test_fetch_script_check_passes_on_a_set_up_checkout() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "fetch_upstream.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "verified" in result.stdout


def test_named_queries_parse_and_reject_duplicates() -> None:
    text = (
        "-- The file's header.\n\n"
        "-- name: a\n-- description: The first.\n-- why\nSELECT 1\n\n"
        "-- name: b\n-- description: The second.\nSELECT 2;\n"
    )
    assert parse_named_queries(text) == {
        "a": "-- description: The first.\n-- why\nSELECT 1",
        "b": "-- description: The second.\nSELECT 2;",
    }
    with pytest.raises(ValueError, match="defined twice"):
        parse_named_queries(text + "-- name: a\n-- description: Again.\nSELECT 3\n")


def test_a_named_query_without_a_description_or_a_statement_is_refused() -> None:
    with pytest.raises(ValueError, match=r"f.sql: query 'a' needs a '-- description: \.\.\.' line"):
        parse_named_queries("-- name: a\n-- no description here\nSELECT 1\n", source="f.sql")
    with pytest.raises(ValueError, match="query 'a' has no statement"):
        parse_named_queries("-- name: a\n-- description: Nothing.\n-- only comments\n")


def test_every_shipped_query_file_parses_with_names_unique_across_files() -> None:
    names = query_names()
    # One from each file: the client's, the worker's, the installer's, the Alembic plugin's.
    assert {"client_start_flow", "claim_task_batch", "server_facts", "stored_flows"} <= names
    assert psycopg_text("claim_task_batch").count("%(qty)s") >= 1


def _listened_channel(query_name: str) -> str:
    match = re.fullmatch(r"LISTEN (\w+);?", sql_text(query_name).splitlines()[-1].strip())
    assert match, sql_text(query_name)
    return match.group(1)


def _notified_channels(sql_file: Path) -> set[str]:
    return set(re.findall(r"pg_notify\('(\w+)'", sql_file.read_text()))


def test_listeners_listen_on_the_channels_the_schema_notifies() -> None:
    schema_sql = ROOT / "pgflow" / "schema" / "sql"
    wakeups = _notified_channels(schema_sql / "extension" / "0003_worker_wakeups.sql")
    assert wakeups == {_listened_channel("listen_for_wakeups")}
    run_events = _notified_channels(schema_sql / "realtime_shim.sql")
    assert run_events == {_listened_channel("listen_for_run_events")}
    assert sql_text("unlisten_run_events").splitlines()[-1] == f"UNLISTEN {run_events.pop()};"


def _string_constants(paths: list[Path]) -> set[str]:
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return found


def test_every_named_query_is_run_by_the_library() -> None:
    """SQL that no release calls leaves the product: each named query's name is a string in
    the library's code (``query("name")``, ``fetch("name", ...)``); tests do not count."""
    product = [*(ROOT / "pgflow").rglob("*.py"), *(ROOT / "alembic_pgflow").rglob("*.py")]
    assert sorted(query_names() - _string_constants(product)) == []
