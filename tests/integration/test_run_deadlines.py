"""Run deadlines (extension/0071_deadlines.sql): ``start_flow(deadline=...)`` and a flow's
``run_timeout`` cancel a run still going at its deadline, as ``cancel_run`` does."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import Flow, get_run, start_flow, step, wait_step
from pgflow.operations import resume_run
from tests.helpers.database import register_flows
from tests.helpers.workers import EventLog, running_worker, wait_until_finished


class Slow(Flow, slug="deadline_slow", max_attempts=1, timeout=600):
    started: ClassVar[list[float]] = []

    @step
    async def crawl(self, input: Any) -> Any:
        Slow.started.append(time.monotonic())
        await anyio.sleep(600)
        return input


class Approval(Flow, slug="deadline_approval", run_timeout=1):
    @wait_step
    def approve(self) -> None: ...


class Quick(Flow, slug="deadline_quick"):
    @step
    def only(self, input: Any) -> Any:
        return input


def sweep(engine: Engine) -> list[dict[str, Any]]:
    with engine.begin() as connection:
        rows = connection.execute(sa.text("SELECT * FROM pgflow_python.enforce_deadlines()"))
        return [dict(r) for r in rows.mappings()]


def deadline_of(engine: Engine, run_id: uuid.UUID) -> dict[str, Any] | None:
    with engine.begin() as connection:
        row = connection.execute(
            sa.text("SELECT * FROM pgflow_python.run_deadlines WHERE run_id = :r"), {"r": run_id}
        )
        found = row.mappings().one_or_none()
        return None if found is None else dict(found)


@pytest.mark.anyio
async def test_a_deadline_cancels_the_run_and_its_running_async_handler_promptly(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Slow)
    Slow.started.clear()
    events = EventLog()
    try:
        async with running_worker(
            pgflow_engine, Slow, deadline_check_interval=0.1, cancel_check_interval=0.1
        ):
            run_id = start_flow(pgflow_engine, Slow, 1, deadline=timedelta(seconds=2))
            run = await wait_until_finished(pgflow_engine, run_id, timeout=30)
            while not events.named("task.cancelled"):
                await anyio.sleep(0.05)
    finally:
        events.close()
    assert run["status"] == "failed"
    with pgflow_engine.begin() as connection:
        ended = get_run(connection, run_id)
    assert ended is not None
    assert ended.cancelled_at is not None
    assert ended.cancel_reason is not None
    assert ended.cancel_reason.startswith("deadline exceeded: the run had to end by")
    assert "start_flow deadline" in ended.cancel_reason
    # The handler was cancelled at its next await, within a few sweeps of the deadline (not
    # after its 600 s sleep); the bound is loose for a loaded machine.
    [(_, cancelled_at)] = events.named("task.cancelled")
    assert cancelled_at - Slow.started[0] < 15
    assert deadline_of(pgflow_engine, run_id)["settled"]  # type: ignore[index]


def test_a_flows_run_timeout_cancels_a_waiting_run(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Approval)
    run_id = start_flow(pgflow_engine, Approval, None)
    deadline = deadline_of(pgflow_engine, run_id)
    assert deadline is not None
    assert deadline["source"] == "run_timeout"
    assert sweep(pgflow_engine) == []  # not due yet
    with pgflow_engine.begin() as connection:
        connection.execute(
            sa.text("SELECT pg_sleep(GREATEST(0, extract(epoch FROM :at - clock_timestamp())))"),
            {"at": deadline["deadline_at"]},
        )
    assert sweep(pgflow_engine) == [
        {"kind": "run_deadline", "run_id": run_id, "step_slug": None, "action": "cancelled"}
    ]
    with pgflow_engine.begin() as connection:
        run = get_run(connection, run_id)
        wait_task = connection.execute(
            sa.text("SELECT status FROM pgflow.step_tasks WHERE run_id = :r"), {"r": run_id}
        ).scalar()
    assert run is not None
    assert run.cancel_reason is not None
    assert "the flow's run_timeout" in run.cancel_reason
    assert wait_task == "cancelled"
    assert sweep(pgflow_engine) == []  # settled: never again

    # A resumed run's run_timeout counts afresh from the resume.
    resume_run(pgflow_engine, run_id)
    again = deadline_of(pgflow_engine, run_id)
    assert again is not None
    assert not again["settled"]
    assert again["deadline_at"] > deadline["deadline_at"]


def test_a_run_that_ended_before_its_deadline_is_left_alone(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Quick)
    run_id = start_flow(pgflow_engine, Quick, 1, deadline=timedelta(seconds=1))
    with pgflow_engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE pgflow.runs SET status = 'completed', completed_at = now(),"
                " remaining_steps = 0 WHERE run_id = :r"
            ),
            {"r": run_id},
        )
        connection.execute(
            sa.text("UPDATE pgflow_python.run_deadlines SET deadline_at = now() WHERE run_id = :r"),
            {"r": run_id},
        )
    assert sweep(pgflow_engine) == [
        {"kind": "run_deadline", "run_id": run_id, "step_slug": None, "action": "ended"}
    ]
    with pgflow_engine.begin() as connection:
        run = get_run(connection, run_id)
    assert run is not None
    assert str(run.status) == "completed"
    assert run.cancelled_at is None


def test_an_aware_datetime_deadline_is_stored_as_given(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Quick)
    at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    run_id = start_flow(pgflow_engine, Quick, 1, deadline=at)
    stored = deadline_of(pgflow_engine, run_id)
    assert stored is not None
    assert (stored["deadline_at"], stored["source"]) == (at, "start_flow")

    # An idempotent start that finds its run leaves that run's deadline alone.
    keyed = start_flow(pgflow_engine, Quick, 1, idempotency_key="k", deadline=at)
    assert (
        start_flow(pgflow_engine, Quick, 1, idempotency_key="k", deadline=timedelta(seconds=5))
        == keyed
    )
    assert deadline_of(pgflow_engine, keyed)["deadline_at"] == at  # type: ignore[index]


@pytest.mark.parametrize(
    ("deadline", "error", "message"),
    [
        (timedelta(0), ValueError, "positive timedelta"),
        (timedelta(seconds=-1), ValueError, "positive timedelta"),
        (datetime(2030, 1, 1), ValueError, "aware datetime"),
        (datetime(2000, 1, 1, tzinfo=UTC), ValueError, "already passed"),
        (60, TypeError, "timedelta or a datetime"),
    ],
)
def test_bad_deadlines_are_refused_before_anything_starts(
    pgflow_engine: Engine, deadline: Any, error: type[Exception], message: str
) -> None:
    register_flows(pgflow_engine, Quick)
    with pytest.raises(error, match=message):
        start_flow(pgflow_engine, Quick, 1, deadline=deadline)
    with pgflow_engine.begin() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM pgflow.runs")).scalar() == 0
