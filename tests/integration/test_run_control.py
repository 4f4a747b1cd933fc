"""Cancel, retry and resume against real PostgreSQL, continued by upstream's own functions.

Everything these operations write outside upstream's functions is followed here by upstream's
``pgmq.read`` / ``start_tasks`` / ``complete_task`` / ``fail_task`` (the example's SQL-only
driver), so the tests prove that upstream accepts the state we leave.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from typing import Any, cast

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import Session

import sql_only_flow
from pgflow import Flow, get_run, get_run_with_states, map_step, start_flow, step
from pgflow.client import wait_for_run
from pgflow.dsl import definition_of
from pgflow.errors import RunCancelledError, UnknownRunError
from pgflow.operations import (
    CancelOutcome,
    ResumeOutcome,
    RetryOutcome,
    cancel_run,
    cancel_run_async,
    describe_run_async,
    list_runs_async,
    list_workers_async,
    resume_run,
    resume_run_async,
    retry_run,
    retry_run_async,
)
from tests.helpers.database import queued_messages
from tests.helpers.database import register_flows as register


class Three(Flow, slug="three", max_attempts=1, base_delay=1):
    @step
    def first(self, input: dict[str, int]) -> int:
        return input["n"] + 1

    @step(depends_on=[first])
    def second(self, deps: dict[str, int]) -> int:
        return deps["first"] * 10

    @step(depends_on=[second])
    def third(self, deps: dict[str, int]) -> dict[str, int]:
        return {"result": deps["second"] + 1}


class Squares(Flow, slug="squares", max_attempts=1, base_delay=1):
    @map_step
    def square(self, item: int) -> int:
        return item * item

    @step(depends_on=[square])
    def total(self, deps: dict[str, list[int]]) -> int:
        return sum(deps["square"])


class Fan(Flow, slug="fan", max_attempts=1, base_delay=1):
    @step
    def numbers(self, input: int) -> list[int]:
        return list(range(input))

    @map_step(array=numbers)
    def double(self, item: int) -> int:
        return item * 2

    @step(depends_on=[double])
    def total(self, deps: dict[str, list[int]]) -> int:
        return sum(deps["double"])


Handlers = dict[str, tuple[list[str], sql_only_flow.Handler]]


class CountingHandlers:
    """Upstream-shaped handlers (0.8.1 task input) that count executions and fail on demand."""

    def __init__(self, handlers: dict[str, tuple[list[str], sql_only_flow.Handler]]) -> None:
        self.calls: Counter[tuple[str, Any]] = Counter()
        self.failing: set[tuple[str, Any]] = set()
        self._handlers = handlers

    def steps(self) -> Handlers:
        return {
            slug: (deps, self._wrap(slug, handler))
            for slug, (deps, handler) in self._handlers.items()
        }

    def _wrap(self, slug: str, handler: sql_only_flow.Handler) -> sql_only_flow.Handler:
        def run(task: Any) -> Any:
            key = (slug, task if not isinstance(task, dict) else None)
            self.calls[key] += 1
            if key in self.failing:
                raise RuntimeError(f"{slug} failed on {task!r}")
            return handler(task)

        return run


def three_handlers() -> CountingHandlers:
    return CountingHandlers(
        {
            "first": ([], lambda task: task["run"]["n"] + 1),
            "second": (["first"], lambda task: task["first"] * 10),
            "third": (["second"], lambda task: {"result": task["second"] + 1}),
        }
    )


def squares_handlers() -> CountingHandlers:
    return CountingHandlers(
        {
            "square": ([], lambda item: cast(int, item) ** 2),
            "total": (["square"], lambda task: sum(task["square"])),
        }
    )


def drive(engine: Engine, flow: type[Flow], handlers: CountingHandlers, run_id: uuid.UUID) -> Any:
    """Work the flow's queue with upstream's functions only until the run ends."""
    return sql_only_flow.drive(engine, definition_of(flow).slug, handlers.steps(), run_id)


def snapshot(engine: Engine, run_id: uuid.UUID) -> dict[str, Any]:
    """The run's stored state without ids and timestamps: what must match a run that never
    failed."""
    with engine.begin() as connection:
        run = get_run_with_states(connection, run_id)
    assert run is not None
    return {
        "status": run.run.status,
        "output": run.run.output,
        "remaining_steps": run.run.remaining_steps,
        "steps": [
            (
                s.step_slug,
                s.status,
                s.remaining_deps,
                s.initial_tasks,
                s.remaining_tasks,
                s.error_message,
                s.failed_at,
            )
            for s in run.steps
        ],
        "tasks": [
            (
                t.step_slug,
                t.task_index,
                t.status,
                t.attempts_count,
                t.output,
                t.error_message,
                t.failed_at,
            )
            for t in run.tasks
        ],
    }


def start(engine: Engine, flow: type[Flow], flow_input: Any) -> uuid.UUID:
    with engine.begin() as connection:
        return start_flow(connection, flow, flow_input)


def claim_all(engine: Engine, flow_slug: str) -> list[dict[str, Any]]:
    """Read and start every visible task of the flow with upstream's functions, as a worker
    would, without finishing them."""
    worker_id = sql_only_flow.register_worker(engine, flow_slug)
    with engine.begin() as connection:
        ids = (
            connection.execute(
                sa.text("SELECT msg_id FROM pgmq.read(:q, 30, 100)"), {"q": flow_slug}
            )
            .scalars()
            .all()
        )
        rows = (
            connection.execute(
                sa.text(
                    "SELECT run_id, step_slug, task_index FROM pgflow.start_tasks(:q, :ids, :w)"
                ),
                {"q": flow_slug, "ids": list(ids), "w": worker_id},
            )
            .mappings()
            .all()
        )
    return [dict(row) for row in rows]


# -- cancel --------------------------------------------------------------------------------------


def test_cancel_ends_a_started_run_and_upstream_then_changes_nothing(pgflow_engine: Engine) -> None:
    register(pgflow_engine, Squares)
    run_id = start(pgflow_engine, Squares, [1, 2, 3])
    in_flight = claim_all(pgflow_engine, "squares")[:2]  # two started, one left started too
    assert len(in_flight) == 2 or len(in_flight) == 3

    result = cancel_run(pgflow_engine, run_id, reason="customer withdrew")
    assert result.outcome is CancelOutcome.CANCELLED
    assert result.cancelled
    assert result.status == "failed"
    assert result.tasks_cancelled == 3

    before = snapshot(pgflow_engine, run_id)
    assert before["status"] == "failed"
    assert {t[2] for t in before["tasks"]} == {"cancelled"}
    assert {t[5] for t in before["tasks"]} == {"cancelled: customer withdrew"}
    assert queued_messages(pgflow_engine, "squares", run_id) == 0

    # Late reports of the in-flight tasks and a fresh claim: upstream changes nothing.
    with pgflow_engine.begin() as connection:
        for task in in_flight:
            key = {"r": task["run_id"], "s": task["step_slug"], "i": task["task_index"]}
            connection.execute(sa.text("SELECT pgflow.complete_task(:r, :s, :i, '1')"), key)
            connection.execute(sa.text("SELECT pgflow.fail_task(:r, :s, :i, 'late')"), key)
    assert claim_all(pgflow_engine, "squares") == []
    assert snapshot(pgflow_engine, run_id) == before

    run = get_run(pgflow_engine, run_id)
    assert run is not None
    assert run.cancelled
    assert run.cancel_reason == "customer withdrew"
    with pytest.raises(RunCancelledError, match="was cancelled: customer withdrew"):
        wait_for_run(pgflow_engine, run_id, timeout=5)


def test_cancelling_twice_or_a_finished_run_is_a_no_op_result(pgflow_engine: Engine) -> None:
    register(pgflow_engine, Three)
    handlers = three_handlers()
    done = start(pgflow_engine, Three, {"n": 1})
    drive(pgflow_engine, Three, handlers, done)
    finished = cancel_run(pgflow_engine, done)
    assert finished.outcome is CancelOutcome.NOT_RUNNING
    assert not finished.cancelled
    assert finished.status == "completed"
    assert get_run(pgflow_engine, done).cancelled is False  # type: ignore[union-attr]

    running = start(pgflow_engine, Three, {"n": 1})
    assert cancel_run(pgflow_engine, running).outcome is CancelOutcome.CANCELLED
    again = cancel_run(pgflow_engine, running, reason="twice")
    assert again.outcome is CancelOutcome.ALREADY_CANCELLED
    assert again.cancelled
    assert get_run(pgflow_engine, running).cancel_reason is None  # type: ignore[union-attr]

    with pytest.raises(UnknownRunError):
        cancel_run(pgflow_engine, uuid.uuid4())


def test_cancel_sends_run_and_step_failed_events(pgflow_engine: Engine) -> None:
    register(pgflow_engine, Three)
    run_id = start(pgflow_engine, Three, {"n": 1})
    claim_all(pgflow_engine, "three")  # "first" is started
    url = pgflow_engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute("LISTEN pgflow")
        cancel_run(pgflow_engine, run_id, reason="events")
        events = [json.loads(n.payload) for n in listener.notifies(timeout=5, stop_after=2)]
    topic = f"pgflow:run:{run_id}"
    assert [(e["topic"], e["event"], e["status"]) for e in events] == [
        (topic, "step:first:failed", "failed"),
        (topic, "run:failed", "failed"),
    ]


def test_cancel_in_the_callers_transaction_is_undone_by_a_rollback(pgflow_engine: Engine) -> None:
    register(pgflow_engine, Three)
    run_id = start(pgflow_engine, Three, {"n": 1})
    with Session(pgflow_engine) as session:
        assert cancel_run(session, run_id).cancelled
        session.rollback()
    assert get_run(pgflow_engine, run_id).status == "started"  # type: ignore[union-attr]


# -- resume --------------------------------------------------------------------------------------


def test_resume_of_a_three_step_flow_failed_at_step_two_reruns_only_what_failed(
    pgflow_engine: Engine,
) -> None:
    register(pgflow_engine, Three)
    reference = start(pgflow_engine, Three, {"n": 4})
    drive(pgflow_engine, Three, three_handlers(), reference)

    handlers = three_handlers()
    handlers.failing.add(("second", None))
    run_id = start(pgflow_engine, Three, {"n": 4})
    assert drive(pgflow_engine, Three, handlers, run_id)["status"] == "failed"

    handlers.failing.clear()
    result = resume_run(pgflow_engine, run_id)
    assert result.outcome is ResumeOutcome.RESUMED
    assert result.resumed
    assert result.tasks_requeued == 1
    assert result.status == "started"
    finished = drive(pgflow_engine, Three, handlers, run_id)

    assert finished == {"status": "completed", "output": {"third": {"result": 51}}}
    assert handlers.calls == Counter({("first", None): 1, ("second", None): 2, ("third", None): 1})
    assert snapshot(pgflow_engine, run_id) == snapshot(pgflow_engine, reference)
    run = get_run(pgflow_engine, run_id)
    assert run is not None
    assert run.resumed_count == 1
    assert not run.cancelled


def test_resume_of_a_root_map_reruns_only_the_unfinished_elements(pgflow_engine: Engine) -> None:
    register(pgflow_engine, Squares)
    items = [1, 2, 3, 4, 5, 6]
    reference = start(pgflow_engine, Squares, items)
    drive(pgflow_engine, Squares, squares_handlers(), reference)

    handlers = squares_handlers()
    handlers.failing.add(("square", 3))
    run_id = start(pgflow_engine, Squares, items)
    assert drive(pgflow_engine, Squares, handlers, run_id)["status"] == "failed"
    completed_before = {
        t.task_index
        for t in get_run_with_states(pgflow_engine, run_id).tasks  # type: ignore[union-attr]
        if t.status == "completed"
    }
    assert completed_before, "some elements completed before the failure"

    handlers.failing.clear()
    first_calls = Counter(handlers.calls)
    result = resume_run(pgflow_engine, run_id)
    assert result.tasks_requeued == len(items) - len(completed_before)
    assert drive(pgflow_engine, Squares, handlers, run_id) == {
        "status": "completed",
        "output": {"total": 91},
    }
    rerun = handlers.calls - first_calls
    assert {item for (_step, item) in rerun if item is not None} == {
        items[i] for i in range(len(items)) if i not in completed_before
    }
    assert all(count == 1 for count in rerun.values())
    assert snapshot(pgflow_engine, run_id) == snapshot(pgflow_engine, reference)


def test_resume_of_a_dependent_map_keeps_its_completed_elements(pgflow_engine: Engine) -> None:
    register(pgflow_engine, Fan)
    handlers = CountingHandlers(
        {
            "numbers": ([], lambda task: list(range(task["run"]))),
            "double": (["numbers"], lambda item: cast(int, item) * 2),
            "total": (["double"], lambda task: sum(task["double"])),
        }
    )
    reference = start(pgflow_engine, Fan, 5)
    drive(pgflow_engine, Fan, CountingHandlers(handlers._handlers), reference)

    handlers.failing.update({("double", 2), ("double", 4)})
    run_id = start(pgflow_engine, Fan, 5)
    assert drive(pgflow_engine, Fan, handlers, run_id)["status"] == "failed"
    handlers.failing.clear()
    before = Counter(handlers.calls)
    resume_run(pgflow_engine, run_id)
    assert drive(pgflow_engine, Fan, handlers, run_id)["output"] == {"total": 20}
    rerun = handlers.calls - before
    assert ("numbers", None) not in rerun
    assert ("double", 0) not in rerun
    assert rerun[("total", None)] == 1
    assert snapshot(pgflow_engine, run_id) == snapshot(pgflow_engine, reference)


def test_resume_of_a_cancelled_run_continues_where_it_stopped(pgflow_engine: Engine) -> None:
    register(pgflow_engine, Three)
    reference = start(pgflow_engine, Three, {"n": 1})
    drive(pgflow_engine, Three, three_handlers(), reference)

    handlers = three_handlers()
    run_id = start(pgflow_engine, Three, {"n": 1})
    sql_only_flow.work_once(
        pgflow_engine,
        "three",
        {slug: h for slug, (_d, h) in handlers.steps().items()},
        sql_only_flow.register_worker(pgflow_engine, "three"),
    )  # "first" completes
    claim_all(pgflow_engine, "three")  # "second" is in flight when the run is cancelled
    assert cancel_run(pgflow_engine, run_id, reason="pause").cancelled

    resumed = resume_run(pgflow_engine, run_id)
    assert resumed.tasks_requeued == 1
    run = get_run(pgflow_engine, run_id)
    assert run is not None
    assert not run.cancelled
    assert run.status == "started"
    drive(pgflow_engine, Three, handlers, run_id)
    assert handlers.calls == Counter({("first", None): 1, ("second", None): 1, ("third", None): 1})
    assert snapshot(pgflow_engine, run_id) == snapshot(pgflow_engine, reference)


def test_resume_refuses_runs_that_did_not_fail(pgflow_engine: Engine) -> None:
    register(pgflow_engine, Three)
    run_id = start(pgflow_engine, Three, {"n": 1})
    refused = resume_run(pgflow_engine, run_id)
    assert refused.outcome is ResumeOutcome.NOT_FAILED
    assert not refused.resumed
    assert refused.tasks_requeued == 0
    with pytest.raises(UnknownRunError):
        resume_run(pgflow_engine, uuid.uuid4())


# -- retry ---------------------------------------------------------------------------------------


def test_retry_starts_a_new_run_with_lineage_once(pgflow_engine: Engine) -> None:
    register(pgflow_engine, Three)
    handlers = three_handlers()
    handlers.failing.add(("third", None))
    with pgflow_engine.begin() as connection:
        failed = start_flow(connection, Three, {"n": 2}, idempotency_key="order-7")
    drive(pgflow_engine, Three, handlers, failed)

    result = retry_run(pgflow_engine, failed)
    assert result.outcome is RetryOutcome.RETRIED
    assert result.retried
    assert result.new_run_id is not None
    assert result.new_run_id != failed
    again = retry_run(pgflow_engine, failed)
    assert again.outcome is RetryOutcome.ALREADY_RETRIED
    assert again.new_run_id == result.new_run_id

    retry = get_run(pgflow_engine, result.new_run_id)
    assert retry is not None
    assert retry.restart_of_run_id == failed
    assert retry.input == {"n": 2}
    assert retry.status == "started"
    assert get_run(pgflow_engine, failed).retried_as_run_id == result.new_run_id  # type: ignore[union-attr]
    # The idempotency key follows the latest attempt.
    assert (
        start_flow(pgflow_engine, Three, {"n": 2}, idempotency_key="order-7") == result.new_run_id
    )

    handlers.failing.clear()
    assert drive(pgflow_engine, Three, handlers, result.new_run_id)["status"] == "completed"
    refused = retry_run(pgflow_engine, result.new_run_id)
    assert refused.outcome is RetryOutcome.NOT_FAILED
    assert refused.new_run_id is None


def test_resume_after_a_type_violation_reruns_the_step_that_fed_the_map(
    pgflow_engine: Engine,
) -> None:
    """Upstream fails the run when a step feeding a map returns a non-array, storing that output
    on the failed task; resume clears it and upstream then resolves the map from the new one."""
    register(pgflow_engine, Fan)
    broken = CountingHandlers(
        {
            "numbers": ([], lambda task: {"not": "an array"}),
            "double": (["numbers"], lambda item: cast(int, item) * 2),
            "total": (["double"], lambda task: sum(task["double"])),
        }
    )
    run_id = start(pgflow_engine, Fan, 3)
    assert drive(pgflow_engine, Fan, broken, run_id)["status"] == "failed"
    [numbers] = get_run_with_states(pgflow_engine, run_id).tasks_of("numbers")  # type: ignore[union-attr]
    assert numbers.output == {"not": "an array"}
    assert numbers.error_message == "[TYPE_VIOLATION] Produced object instead of array"

    fixed = CountingHandlers(
        {
            "numbers": ([], lambda task: list(range(task["run"]))),
            "double": (["numbers"], lambda item: cast(int, item) * 2),
            "total": (["double"], lambda task: sum(task["double"])),
        }
    )
    assert resume_run(pgflow_engine, run_id).tasks_requeued == 1
    assert drive(pgflow_engine, Fan, fixed, run_id) == {
        "status": "completed",
        "output": {"total": 6},
    }
    reference = start(pgflow_engine, Fan, 3)
    drive(pgflow_engine, Fan, fixed, reference)
    assert snapshot(pgflow_engine, run_id) == snapshot(pgflow_engine, reference)


@pytest.mark.anyio
async def test_async_twins_take_async_engines_and_sessions(pgflow_engine: Engine) -> None:
    register(pgflow_engine, Three)
    run_id = start(pgflow_engine, Three, {"n": 1})
    engine = create_async_engine(pgflow_engine.url, poolclass=sa.pool.NullPool)
    try:
        async with AsyncSession(engine) as session:
            assert (await cancel_run_async(session, run_id, "async")).cancelled
            await session.rollback()  # in the caller's transaction: undone
        assert (await cancel_run_async(engine, run_id, "async")).cancelled
        [summary] = await list_runs_async(engine, status="cancelled")
        assert summary.run_id == run_id
        assert summary.cancel_reason == "async"
        resumed = await resume_run_async(engine, run_id)
        assert resumed.resumed
        assert (await cancel_run_async(engine, run_id)).cancelled
        retried = await retry_run_async(engine, run_id)
        assert retried.new_run_id is not None
        details = await describe_run_async(engine, retried.new_run_id)
        assert details is not None
        assert details.run.restart_of_run_id == run_id
        assert [s.step_slug for s in details.steps] == ["first", "second", "third"]
        assert await list_workers_async(engine) == []
    finally:
        await engine.dispose()
