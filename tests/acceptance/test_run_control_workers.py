"""Cancel and resume with real workers: our worker cancels a sleeping handler of a cancelled run,
and a TypeScript worker (@pgflow/core 0.8.1) leaves a cancelled run alone but processes the
tasks of a resumed one."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import anyio
import anyio.to_thread
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import sql_only_flow
from pgflow import Flow, get_run_with_states, map_step, start_flow, step
from pgflow.operations import cancel_run, resume_run
from tests.acceptance.test_typescript_interop_runs import comparable, stored
from tests.helpers.database import register_flows
from tests.helpers.node import node_worker
from tests.helpers.waiting import wait_until
from tests.helpers.workers import EventLog, running_worker

pytestmark = pytest.mark.anyio


class Handled:
    """What the Python handlers of this module saw."""

    started: ClassVar[list[tuple[str, Any]]] = []
    cancelled: ClassVar[list[tuple[str, Any]]] = []


class Interop(Flow, slug="interop", max_attempts=1, base_delay=1):
    """The shape the Node test worker has handlers for (tests/node/worker.mjs), with a Python
    seed that sleeps until cancelled."""

    @step
    async def seed(self, input: dict[str, int]) -> list[int]:
        Handled.started.append(("seed", input["n"]))
        try:
            await anyio.sleep(120)
        except anyio.get_cancelled_exc_class():
            Handled.cancelled.append(("seed", input["n"]))
            raise
        return [input["n"], input["n"] + 1]

    @map_step(array=seed)
    def square(self, x: int) -> int:
        return x * x

    @step(depends_on=[square, seed])
    def total(self, deps: dict[str, Any]) -> dict[str, int]:
        return {"sum": sum(deps["square"]), "count": len(deps["seed"])}


def upstream_handlers(*, failing_squares: frozenset[int] = frozenset()) -> Any:
    """The same steps in upstream's task-input shape, for the SQL-only driver."""

    def square(x: Any) -> Any:
        if x in failing_squares:
            raise RuntimeError(f"square of {x} failed")
        return x * x

    return {
        "seed": ([], lambda task: [task["run"]["n"], task["run"]["n"] + 1]),
        "square": (["seed"], square),
        "total": (
            ["square", "seed"],
            lambda task: {"sum": sum(task["square"]), "count": len(task["seed"])},
        ),
    }


def start(engine: Engine, n: int) -> uuid.UUID:
    with engine.begin() as connection:
        return start_flow(connection, Interop, {"n": n})


async def test_cancel_stops_a_sleeping_async_handler_and_node_later_leaves_the_run_alone(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Interop)
    Handled.started.clear()
    Handled.cancelled.clear()
    cancelled_run = start(pgflow_engine, 1)
    events = EventLog()
    try:
        async with running_worker(pgflow_engine, Interop):
            await anyio.to_thread.run_sync(
                lambda: wait_until(lambda: Handled.started, what="the seed handler to start")
            )
            result = await anyio.to_thread.run_sync(
                lambda: cancel_run(pgflow_engine, cancelled_run, reason="test")
            )
            assert result.cancelled
            await anyio.to_thread.run_sync(
                lambda: wait_until(lambda: Handled.cancelled, what="the handler to be cancelled")
            )
    finally:
        events.close()
    assert Handled.started == [("seed", 1)]
    assert Handled.cancelled == [("seed", 1)]
    assert events.named("task.cancelled")
    assert not events.named("task.completed")
    assert not events.named("task.failed")

    before = stored(pgflow_engine, cancelled_run)
    assert before["run"]["status"] == "failed"
    assert before["messages"] == []
    [seed] = before["tasks"]
    assert (seed["status"], seed["attempts_count"], seed["error_message"]) == (
        "cancelled",
        1,
        "cancelled: test",
    )

    # A TypeScript worker started afterwards processes another run completely and nothing of
    # the cancelled one.
    other_run = start(pgflow_engine, 3)
    report = await anyio.to_thread.run_sync(lambda: node_worker(pgflow_engine, "interop"))
    assert sorted(attempt["step"] for attempt in report["attempts"]) == [
        "seed",
        "square",
        "square",
        "total",
    ]
    assert stored(pgflow_engine, other_run)["run"]["output"] == {"total": {"sum": 25, "count": 2}}
    assert stored(pgflow_engine, cancelled_run) == before


async def test_a_typescript_worker_finishes_a_resumed_run_like_one_that_never_failed(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Interop)
    reference = start(pgflow_engine, 4)
    sql_only_flow.drive(pgflow_engine, "interop", upstream_handlers(), reference)

    failed = start(pgflow_engine, 4)
    outcome = sql_only_flow.drive(
        pgflow_engine, "interop", upstream_handlers(failing_squares=frozenset({5})), failed
    )
    assert outcome["status"] == "failed"
    squares = get_run_with_states(pgflow_engine, failed).tasks_of("square")  # type: ignore[union-attr]
    assert [t.status for t in squares] == ["completed", "failed"]

    resumed = resume_run(pgflow_engine, failed)
    assert resumed.tasks_requeued == 1
    report = await anyio.to_thread.run_sync(lambda: node_worker(pgflow_engine, "interop"))
    # Only the failed element and the step after it run again, in Node.
    assert sorted(attempt["step"] for attempt in report["attempts"]) == ["square", "total"]
    assert comparable(stored(pgflow_engine, failed)) == comparable(stored(pgflow_engine, reference))
    with pgflow_engine.begin() as connection:
        attempts = connection.execute(
            sa.text(
                "SELECT step_slug, task_index, attempts_count FROM pgflow.step_tasks"
                " WHERE run_id = :r ORDER BY step_slug, task_index"
            ),
            {"r": failed},
        ).all()
    assert [tuple(row) for row in attempts] == [
        ("seed", 0, 1),
        ("square", 0, 1),
        ("square", 1, 1),
        ("total", 0, 1),
    ]
