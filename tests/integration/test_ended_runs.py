"""A run that fails or is cancelled leaves nothing in flight (extension/0060_ended_runs.sql).

Its queued and started tasks end ``cancelled`` and their messages leave the queue, whoever
failed the run: upstream's ``fail_task`` on a last attempt (as a TypeScript worker calls it),
upstream's type-violation path, ``cancel_run``. Late reports change nothing; resume puts the
cancelled tasks back.
"""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

import sql_only_flow
from pgflow import Flow, get_run_with_states, map_step, start_flow, step
from pgflow.operations import cancel_run, list_workers, resume_run
from tests.helpers.database import queued_messages
from tests.helpers.database import register_flows as register


class Squares(Flow, slug="ended_squares", max_attempts=1, base_delay=1):
    @map_step
    def square(self, item: int) -> int:
        return item * item

    @step(depends_on=[square])
    def total(self, deps: dict[str, list[int]]) -> int:
        return sum(deps["square"])


class Branches(Flow, slug="ended_branches", max_attempts=1, base_delay=1):
    @step
    def left(self, input: int) -> int:
        return input

    @step
    def right(self, input: int) -> list[int]:
        return [input]

    @map_step(array=right)
    def each(self, item: int) -> int:
        return item


def claim(engine: Engine, flow_slug: str, worker_id: uuid.UUID, limit: int) -> list[dict[str, Any]]:
    """Read and start up to ``limit`` tasks with upstream's functions, as a worker would."""
    with engine.begin() as connection:
        ids = (
            connection.execute(
                sa.text("SELECT msg_id FROM pgmq.read(:q, 30, :n)"), {"q": flow_slug, "n": limit}
            )
            .scalars()
            .all()
        )
        rows = connection.execute(
            sa.text("SELECT run_id, step_slug, task_index FROM pgflow.start_tasks(:q, :ids, :w)"),
            {"q": flow_slug, "ids": list(ids), "w": worker_id},
        )
        return [dict(row) for row in rows.mappings()]


def report(engine: Engine, task: dict[str, Any], function: str, value: str) -> None:
    key = {"r": task["run_id"], "s": task["step_slug"], "i": task["task_index"], "v": value}
    with engine.begin() as connection:
        if function == "complete":
            connection.execute(sa.text("SELECT pgflow.complete_task(:r, :s, :i, :v)"), key)
        else:
            connection.execute(sa.text("SELECT pgflow.fail_task(:r, :s, :i, :v)"), key)


def task_statuses(engine: Engine, run_id: uuid.UUID) -> dict[tuple[str, int], str]:
    with engine.begin() as connection:
        run = get_run_with_states(connection, run_id)
    assert run is not None
    return {(t.step_slug, t.task_index): str(t.status) for t in run.tasks}


def start(engine: Engine, flow: type[Flow], flow_input: Any) -> uuid.UUID:
    with engine.begin() as connection:
        return start_flow(connection, flow, flow_input)


def test_a_map_run_failed_by_one_element_cancels_its_siblings(pgflow_engine: Engine) -> None:
    register(pgflow_engine, Squares)
    run_id = start(pgflow_engine, Squares, [1, 2, 3, 4])
    worker_id = sql_only_flow.register_worker(pgflow_engine, "ended_squares")
    started = claim(pgflow_engine, "ended_squares", worker_id, 3)  # the fourth stays queued
    assert len(started) == 3

    report(pgflow_engine, started[0], "fail", "boom")  # its only attempt: the run fails

    statuses = task_statuses(pgflow_engine, run_id)
    assert statuses[("square", started[0]["task_index"])] == "failed"
    assert sorted(statuses.values()) == ["cancelled", "cancelled", "cancelled", "failed"]
    assert queued_messages(pgflow_engine, "ended_squares", run_id) == 0
    (worker,) = [w for w in list_workers(pgflow_engine) if w.worker_id == worker_id]
    assert worker.tasks_started == 0

    # Handlers still running report late: nothing changes.
    report(pgflow_engine, started[1], "complete", "4")
    report(pgflow_engine, started[2], "fail", "late")
    assert task_statuses(pgflow_engine, run_id) == statuses

    # Resume puts every unfinished task back, and upstream's functions finish the run.
    assert resume_run(pgflow_engine, run_id).tasks_requeued == 4
    handlers = {"square": lambda item: item * item, "total": lambda task: sum(task["square"])}
    finished = sql_only_flow.drive(
        pgflow_engine,
        "ended_squares",
        {"square": ([], handlers["square"]), "total": (["square"], handlers["total"])},
        run_id,
    )
    assert finished["status"] == "completed"
    assert finished["output"] == {"total": 30}


def test_a_type_violation_cancels_the_other_branch(pgflow_engine: Engine) -> None:
    register(pgflow_engine, Branches)
    run_id = start(pgflow_engine, Branches, 7)
    worker_id = sql_only_flow.register_worker(pgflow_engine, "ended_branches")
    started = {t["step_slug"]: t for t in claim(pgflow_engine, "ended_branches", worker_id, 10)}
    assert set(started) == {"left", "right"}

    report(pgflow_engine, started["right"], "complete", '"not an array"')

    assert task_statuses(pgflow_engine, run_id) == {
        ("left", 0): "cancelled",
        ("right", 0): "failed",
    }
    assert queued_messages(pgflow_engine, "ended_branches", run_id) == 0


def test_cancel_ends_queued_and_started_tasks_as_cancelled(pgflow_engine: Engine) -> None:
    register(pgflow_engine, Squares)
    run_id = start(pgflow_engine, Squares, [1, 2, 3])
    worker_id = sql_only_flow.register_worker(pgflow_engine, "ended_squares")
    claim(pgflow_engine, "ended_squares", worker_id, 2)

    assert cancel_run(pgflow_engine, run_id, reason="not needed").tasks_cancelled == 3

    with pgflow_engine.begin() as connection:
        run = get_run_with_states(connection, run_id)
    assert run is not None
    assert {(str(t.status), t.error_message) for t in run.tasks} == {
        ("cancelled", "cancelled: not needed")
    }
    assert queued_messages(pgflow_engine, "ended_squares", run_id) == 0
