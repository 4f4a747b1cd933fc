"""The schema installer against a real server: modes, idempotence, adoption, refusals."""

from __future__ import annotations

import json
import select
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from pgflow._db import create_engine
from pgflow._devserver import DevServer
from pgflow.errors import IncompatibleSchemaError, SchemaError
from pgflow.schema import PgmqMode, _pgmq, _sources, install, status
from tests.helpers import database

EVERYTHING = 1 + 1 + 12 + len(_sources.extension_migrations())  # pgmq, shim, upstream, ours


@pytest.fixture
def engine_on_empty(pgflow_empty_database: URL) -> Iterator[Engine]:
    engine = create_engine(pgflow_empty_database, poolclass=sa.pool.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def server_offers_pgmq(pgflow_server: DevServer) -> None:
    """Make sure the server has a pgmq extension to offer (registering the bundled SQL)."""
    engine = create_engine(pgflow_server.url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            if connection.execute(
                sa.text("SELECT 1 FROM pg_available_extensions WHERE name = 'pgmq'")
            ).first():
                return
            directory = _pgmq.extension_directory(connection)
            if directory is None:
                pytest.skip("this server offers no pgmq extension and its directory is remote")
            version, sql = _sources.bundled_pgmq()
            assert _pgmq.register(connection, directory, version, sql)
    finally:
        engine.dispose()


def test_install_then_reinstall_changes_nothing(pgflow_empty_database: URL) -> None:
    first = install(pgflow_empty_database)
    assert len(first.applied) == EVERYTHING
    assert first.applied[2:14] == tuple(
        f"upstream/{m.name}" for m in _sources.upstream_migrations()
    )
    second = install(pgflow_empty_database)
    assert not second.changed
    assert second.pgmq_mode == first.pgmq_mode
    snapshot = status(pgflow_empty_database)
    assert snapshot.up_to_date
    assert snapshot.upstream_version == "0.8.1"
    assert snapshot.realtime.startswith("shim")


def test_status_of_an_empty_database_lists_everything_pending(pgflow_empty_database: URL) -> None:
    snapshot = status(pgflow_empty_database)
    assert not snapshot.up_to_date
    assert snapshot.pgmq_mode is None
    assert snapshot.upstream_version is None
    assert len(snapshot.pending) == EVERYTHING
    assert snapshot.pending[:2] == ("pgmq", "realtime/realtime_shim.sql")
    assert "run `pgflow db install`" in snapshot.render()


@pytest.mark.parametrize("mode", [PgmqMode.EXTENSION, PgmqMode.REGISTERED, PgmqMode.PLAIN], ids=str)
def test_each_pgmq_mode_runs_flows_end_to_end(
    mode: PgmqMode, engine_on_empty: Engine, request: pytest.FixtureRequest
) -> None:
    if mode is PgmqMode.EXTENSION:
        request.getfixturevalue("server_offers_pgmq")
    report = install(engine_on_empty, pgmq_mode=mode)
    assert report.pgmq_mode is mode
    snapshot = status(engine_on_empty)
    assert snapshot.pgmq_mode is mode
    assert snapshot.pgmq_version == "1.13.0" or mode is PgmqMode.EXTENSION
    assert snapshot.up_to_date
    with engine_on_empty.begin() as connection:
        extension = connection.execute(
            sa.text("SELECT extversion FROM pg_extension WHERE extname = 'pgmq'")
        ).scalar()
    assert (extension is None) == (mode is PgmqMode.PLAIN)
    database.assert_flows_run_end_to_end(engine_on_empty)
    assert not install(engine_on_empty).changed


def test_installed_mode_cannot_be_switched(pgflow_empty_database: URL) -> None:
    install(pgflow_empty_database, pgmq_mode=PgmqMode.PLAIN)
    with pytest.raises(SchemaError, match="already installed in mode plain"):
        install(pgflow_empty_database, pgmq_mode=PgmqMode.REGISTERED)


def test_install_runs_inside_the_callers_transaction(engine_on_empty: Engine) -> None:
    with engine_on_empty.connect() as connection:
        install(connection, pgmq_mode=PgmqMode.PLAIN)
        assert connection.execute(sa.text("SELECT to_regclass('pgflow.flows')")).scalar()
        connection.rollback()
    assert database.schemas(engine_on_empty.url) == set()


def test_a_failed_install_leaves_nothing_behind(pgflow_empty_database: URL) -> None:
    # A pgmq type that the bundled pgmq SQL cannot create: the install fails part-way through.
    database.run_sql(
        pgflow_empty_database,
        "CREATE SCHEMA pgmq; CREATE TYPE pgmq.message_record AS (msg_id bigint);",
    )
    with pytest.raises(
        SchemaError, match=r"applying pgmq/pgmq--1.13.0.sql failed: .*already exists"
    ):
        install(pgflow_empty_database, pgmq_mode=PgmqMode.PLAIN)
    assert database.schemas(pgflow_empty_database) == {"pgmq"}


def _install_like_upstream_tooling(url: URL, migrations: list[Path]) -> None:
    """Supabase-style: pgmq extension, a realtime.send of the platform, migrations by psql."""
    database.run_sql(
        url,
        "CREATE SCHEMA realtime;"
        " CREATE FUNCTION realtime.send(payload jsonb, event text, topic text,"
        " private boolean DEFAULT true) RETURNS void LANGUAGE sql AS 'SELECT NULL';",
    )
    database.apply_with_psql(url, migrations)


@pytest.mark.usefixtures("server_offers_pgmq")
def test_upstream_installed_by_other_tooling_is_adopted(pgflow_empty_database: URL) -> None:
    _install_like_upstream_tooling(pgflow_empty_database, database.upstream_files())
    before = status(pgflow_empty_database)
    assert before.pgmq_mode is PgmqMode.EXTENSION
    assert before.realtime.startswith("native")
    report = install(pgflow_empty_database)
    assert len(report.adopted) == 1 + 12  # pgmq + every upstream migration
    assert report.applied == tuple(f"extension/{m.name}" for m in _sources.extension_migrations())
    after = status(pgflow_empty_database)
    assert after.up_to_date
    assert after.realtime.startswith("native")  # the platform's realtime.send is left alone
    assert not install(pgflow_empty_database).changed
    engine = create_engine(pgflow_empty_database, poolclass=sa.pool.NullPool)
    database.assert_flows_run_end_to_end(engine)
    engine.dispose()


@pytest.mark.usefixtures("server_offers_pgmq")
def test_an_older_foreign_schema_is_refused(pgflow_empty_database: URL) -> None:
    _install_like_upstream_tooling(pgflow_empty_database, database.upstream_files()[:11])
    with pytest.raises(IncompatibleSchemaError, match=r"older than 0\.8\.1"):
        install(pgflow_empty_database)
    assert database.schemas(pgflow_empty_database) == {"pgflow", "pgmq", "realtime"}
    assert "older than 0.8.1" in (status(pgflow_empty_database).problem or "")


@pytest.mark.usefixtures("server_offers_pgmq")
def test_a_newer_foreign_schema_is_refused(pgflow_empty_database: URL) -> None:
    _install_like_upstream_tooling(pgflow_empty_database, database.upstream_files())
    database.run_sql(
        pgflow_empty_database,
        "CREATE FUNCTION pgflow.requeue_stalled_tasks() RETURNS void LANGUAGE sql AS '';",
    )
    with pytest.raises(IncompatibleSchemaError, match=r"newer than 0\.8\.1.*requeue_stalled_tasks"):
        install(pgflow_empty_database)


def test_a_changed_migration_under_a_recorded_name_is_refused(pgflow_database: URL) -> None:
    database.run_sql(
        pgflow_database,
        "UPDATE pgflow_python.installed SET sha256 = 'abc'"
        " WHERE name LIKE '%_pgflow_add_realtime.sql'",
    )
    with pytest.raises(
        IncompatibleSchemaError, match=r"add_realtime\.sql was applied with sha256 abc"
    ):
        install(pgflow_database)


def test_realtime_shim_notifies_compactly_even_for_huge_outputs(pgflow_engine: Engine) -> None:
    with psycopg.connect(database.libpq_url(pgflow_engine.url), autocommit=True) as listener:
        listener.execute("LISTEN pgflow")
        with pgflow_engine.begin() as connection:
            connection.execute(sa.text("SELECT pgflow.create_flow('big')"))
            connection.execute(sa.text("SELECT pgflow.add_step('big', 'blob')"))
            run_id = connection.execute(
                sa.text("SELECT run_id FROM pgflow.start_flow('big', '{}'::jsonb)")
            ).scalar_one()
            connection.execute(
                sa.text(
                    "INSERT INTO pgflow.workers (worker_id, queue_name, function_name)"
                    " VALUES (gen_random_uuid(), 'big', 'test')"
                )
            )
            connection.execute(
                sa.text(
                    "SELECT pgflow.start_tasks('big', array_agg(msg_id),"
                    " (SELECT worker_id FROM pgflow.workers LIMIT 1))"
                    " FROM pgmq.read('big', 30, 1)"
                )
            )
            # 100 kB of output: far past NOTIFY's 8000-byte payload limit
            connection.execute(
                sa.text(
                    "SELECT pgflow.complete_task(:run, 'blob', 0, to_jsonb(repeat('x', 100000)))"
                ),
                {"run": run_id},
            )
        events: list[dict[str, str]] = []
        deadline = 50
        while len(events) < 4 and deadline:
            if select.select([listener.fileno()], [], [], 0.1)[0]:
                events += [
                    json.loads(n.payload) for n in listener.notifies(timeout=0, stop_after=1)
                ]
            deadline -= 1
    assert [e["event"] for e in events] == [
        "run:started",
        "step:blob:started",
        "step:blob:completed",
        "run:completed",
    ]
    assert {e["run_id"] for e in events} == {str(run_id)}
    assert all(e["topic"] == f"pgflow:run:{run_id}" for e in events)
    assert all("output" not in e for e in events)
    assert events[-1]["status"] == "completed"
