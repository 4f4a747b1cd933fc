"""A worker killed with SIGKILL while it runs a @subflow method: its lease runs out, another
worker process runs the method again and starts the child, once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from pgflow import start_flow
from tests.helpers import database
from tests.helpers.database import register_flows
from tests.helpers.subflow_process_flows import Child, Parent
from tests.helpers.waiting import wait_until
from tests.helpers.worker_processes import worker_processes

WORKER = [sys.executable, "-m", "pgflow", "run-worker", "tests.helpers.subflow_process_flows"]
WORKER += ["--log-format", "json", "--poll-interval", "0.5"]


def rows(engine: Engine, statement: str, **params: Any) -> list[Any]:
    with engine.begin() as connection:
        return list(connection.execute(sa.text(statement), params))


def test_a_killed_workers_child_start_is_taken_over_and_the_child_started_once(
    pgflow_engine: Engine, pgflow_database: URL, tmp_path: Path
) -> None:
    register_flows(pgflow_engine, Child, Parent)
    run_id = start_flow(pgflow_engine, Parent, {"seconds": 3})
    env = {"DATABASE_URL": database.libpq_url(pgflow_database)}
    with worker_processes(WORKER, tmp_path, env) as spawn:
        doomed = spawn()
        wait_until(
            lambda: rows(
                pgflow_engine,
                "SELECT 1 FROM pgflow_python.subflow_children WHERE run_id = :r"
                " AND start_attempts = 1 AND lease_until IS NOT NULL",
                r=run_id,
            ),
            timeout=30,
            what="the first worker to lease the child start",
        )
        doomed.kill()  # SIGKILL inside the method: no report, the lease stays
        doomed.wait(timeout=10)
        survivor = spawn()
        wait_until(
            lambda: rows(
                pgflow_engine,
                "SELECT 1 FROM pgflow.runs WHERE run_id = :r AND status <> 'started'",
                r=run_id,
            ),
            timeout=90,
            what="the parent to finish once the lease ran out",
        )
        assert survivor.poll() is None
    [(status, output)] = rows(
        pgflow_engine, "SELECT status, output FROM pgflow.runs WHERE run_id = :r", r=run_id
    )
    assert status == "completed"
    assert output == {"child": {"echo": {"started_by": survivor.pid}}}
    [(attempts, child_run_id)] = rows(
        pgflow_engine,
        "SELECT start_attempts, child_run_id FROM pgflow_python.subflow_children WHERE run_id = :r",
        r=run_id,
    )
    assert attempts == 2
    children = rows(pgflow_engine, "SELECT run_id FROM pgflow.runs WHERE flow_slug = 'proc_child'")
    assert [c for (c,) in children] == [child_run_id]
