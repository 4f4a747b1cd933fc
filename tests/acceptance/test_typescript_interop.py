"""TypeScript pgflow and pgflow-python workers on one database: compiled flows and shared work."""

from __future__ import annotations

import anyio
import anyio.to_thread
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import start_flow
from pgflow.dsl import definition_of
from tests.helpers.database import register_flows
from tests.helpers.interop_flows import Interop
from tests.helpers.node import node_worker, typescript_compile
from tests.helpers.workers import running_worker, wait_until_finished


def test_a_flow_compiled_by_pgflow_python_runs_on_a_typescript_worker(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Interop)
    with pgflow_engine.begin() as connection:
        run_ids = [start_flow(connection, Interop, {"n": n}) for n in range(5)]
    report = node_worker(pgflow_engine, "interop")
    assert report["completed"] == 5 * (1 + 2 + 1)
    with pgflow_engine.begin() as connection:
        rows = connection.execute(
            sa.text("SELECT input, status, output FROM pgflow.runs ORDER BY input->>'n'")
        ).all()
        workers = (
            connection.execute(
                sa.text("SELECT DISTINCT last_worker_id::text FROM pgflow.step_tasks")
            )
            .scalars()
            .all()
        )
    assert len(rows) == len(run_ids)
    for flow_input, status, output in rows:
        n = flow_input["n"]
        assert status == "completed"
        assert output == {"total": {"sum": n * n + (n + 1) ** 2, "count": 2}}
    assert workers == [report["workerId"]]


@pytest.mark.anyio
async def test_a_flow_compiled_by_typescript_runs_on_python_workers(pgflow_engine: Engine) -> None:
    with pgflow_engine.begin() as connection:
        for statement in typescript_compile([definition_of(Interop)])[0]:
            connection.execute(sa.text(statement))
        run_ids = [start_flow(connection, Interop, {"n": n}) for n in range(5)]
    # The worker's start-up check accepts the TypeScript-compiled flow as Interop's shape.
    async with running_worker(pgflow_engine, Interop):
        runs = [await wait_until_finished(pgflow_engine, run_id) for run_id in run_ids]
    for n, run in enumerate(runs):
        assert run == {
            "status": "completed",
            "output": {"total": {"sum": n * n + (n + 1) ** 2, "count": 2}},
        }


@pytest.mark.anyio
async def test_typescript_and_python_workers_share_one_flow_over_200_runs(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Interop)
    with pgflow_engine.begin() as connection:
        # n from 1: upstream's TypeScript client stores a falsy output (0 = square(0)) as null.
        run_ids = [start_flow(connection, Interop, {"n": n}) for n in range(1, 201)]
    async with running_worker(pgflow_engine, Interop, concurrency=4, batch_size=4):
        report = await anyio.to_thread.run_sync(node_worker, pgflow_engine, "interop")
        runs = [await wait_until_finished(pgflow_engine, run_id) for run_id in run_ids]
    assert all(run["status"] == "completed" for run in runs)
    for n, run in enumerate(runs, start=1):
        assert run["output"] == {"total": {"sum": n * n + (n + 1) ** 2, "count": 2}}
    with pgflow_engine.begin() as connection:
        per_worker: dict[str, int] = dict(
            connection.execute(
                sa.text(
                    "SELECT w.function_name, count(*) FROM pgflow.step_tasks t"
                    " JOIN pgflow.workers w ON w.worker_id = t.last_worker_id GROUP BY 1"
                )
            ).all()
        )
        attempts = connection.execute(
            sa.text("SELECT DISTINCT status, attempts_count FROM pgflow.step_tasks")
        ).all()
    assert [tuple(a) for a in attempts] == [("completed", 1)]  # every task done exactly once
    assert per_worker["node-test-worker"] == report["completed"] > 0
    python_side = sum(v for k, v in per_worker.items() if k != "node-test-worker")
    assert python_side > 0
    assert python_side + report["completed"] == 200 * 4
