"""Helpers shared by the integration and acceptance tests (plain functions, real database)."""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

import sql_only_flow
from pgflow._db import create_engine
from pgflow.compiler import compile_flow
from pgflow.dsl import Flow, definition_of
from pgflow.schema import _sources


def register_flows(engine: Engine, *flows: type[Flow]) -> None:
    """Register ``flows`` in the database with the SQL the compiler emits."""
    with engine.begin() as connection:
        for flow in flows:
            for statement in compile_flow(definition_of(flow)):
                connection.execute(sa.text(statement))


def queued_messages(engine: Engine, flow_slug: str, run_id: uuid.UUID) -> int:
    """How many of the run's messages are still in the flow's queue (archived ones excluded)."""
    with engine.begin() as connection:
        return int(
            connection.execute(
                sa.text(
                    "SELECT count(*) FROM pgmq.q_" + flow_slug + " WHERE message->>'run_id' = :id"
                ),
                {"id": str(run_id)},
            ).scalar_one()
        )


def libpq_url(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def scalar(url: URL, statement: str, **params: Any) -> Any:
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            return connection.execute(sa.text(statement), params).scalar()
    finally:
        engine.dispose()


def run_sql(url: URL, script: str) -> None:
    """Run a multi-statement script in autocommit, as a DBA at a psql prompt would."""
    with psycopg.connect(libpq_url(url), autocommit=True) as connection:
        connection.execute(script)


def schemas(url: URL) -> set[str]:
    statement = (
        "SELECT array_agg(nspname::text) FROM pg_namespace"
        " WHERE nspname IN ('pgflow', 'pgflow_python', 'pgmq', 'realtime')"
    )
    return set(scalar(url, statement) or [])


def apply_with_psql(url: URL, sql_files: list[Path]) -> None:
    """Apply SQL files the way other tooling would: psql (or psycopg where psql is absent)."""
    psql = shutil.which("psql")
    for path in sql_files:
        if psql:
            subprocess.run(
                [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", libpq_url(url), "-f", str(path)],
                check=True,
                capture_output=True,
            )
        else:
            with psycopg.connect(libpq_url(url), autocommit=True) as connection:
                connection.execute(path.read_text())


def upstream_files() -> list[Path]:
    directory = _sources.upstream_directory()
    return [directory / m.name for m in _sources.upstream_migrations()]


def run_greeting_flow(engine: Engine) -> dict[str, Any]:
    """Define the example flow, start a run, drive it with raw SQL; return the finished run."""
    slug = f"greeting_{uuid.uuid4().hex[:8]}"
    with engine.begin() as connection:
        sql_only_flow.define_flow(connection, slug, sql_only_flow.GREETING_FLOW)
        run_id = sql_only_flow.start_run(connection, slug, {"name": " grace hopper"})
    return sql_only_flow.drive(engine, slug, sql_only_flow.GREETING_FLOW, run_id)


def run_failing_flow(engine: Engine) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A flow whose only step always raises, with max_attempts=2; return the run and its tasks."""
    slug = f"failing_{uuid.uuid4().hex[:8]}"

    def explode(task: dict[str, Any]) -> Any:
        raise ValueError(f"cannot handle {task['run']}")

    steps: dict[str, tuple[list[str], sql_only_flow.Handler]] = {"explode": ([], explode)}
    with engine.begin() as connection:
        sql_only_flow.define_flow(connection, slug, steps, max_attempts=2, base_delay=0)
        run_id = sql_only_flow.start_run(connection, slug, 41)
    run = sql_only_flow.drive(engine, slug, steps, run_id)
    with engine.begin() as connection:
        tasks = (
            connection.execute(
                sa.text(
                    "SELECT status, attempts_count, error_message FROM pgflow.step_tasks"
                    " WHERE run_id = :id"
                ),
                {"id": run_id},
            )
            .mappings()
            .all()
        )
    return run, [dict(t) for t in tasks]


def assert_flows_run_end_to_end(engine: Engine) -> None:
    run = run_greeting_flow(engine)
    assert run["status"] == "completed"
    assert run["output"] == {
        "card": {"to": "Grace Hopper", "text": "Hello, Grace Hopper!", "chars": 20}
    }
    failed, tasks = run_failing_flow(engine)
    assert failed["status"] == "failed"
    assert tasks == [
        {"status": "failed", "attempts_count": 2, "error_message": "ValueError: cannot handle 41"}
    ]
