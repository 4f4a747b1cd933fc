"""Signal steps (extension/0070_wait_steps.sql, pgflow.signal): a step with no handler waits in
the database, holding no worker, until a signal completes it or its timeout passes."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from pgflow import (
    Flow,
    SignalOutcome,
    get_run_with_states,
    signal,
    signal_async,
    start_flow,
    step,
    wait_step,
)
from pgflow.errors import (
    NotAWaitStepError,
    SignalOutputNotJSONError,
    SignalTooLateError,
    UnknownRunError,
)
from pgflow.operations import cancel_run, resume_run
from tests.helpers.database import register_flows
from tests.helpers.workers import running_worker, wait_until_finished


class Refund(Flow, slug="wait_refund"):
    @step
    def draft(self, input: dict[str, Any]) -> dict[str, Any]:
        return {"amount": input["amount"]}

    @wait_step(depends_on=[draft])
    def approval(self) -> None: ...

    @step(depends_on=[draft, approval])
    def pay(self, deps: dict[str, Any]) -> dict[str, Any]:
        return {"paid": deps["draft"]["amount"], "by": deps["approval"]["by"]}


class RootWait(Flow, slug="wait_root"):
    @wait_step
    def webhook(self) -> None: ...

    @step(depends_on=[webhook])
    def record(self, deps: dict[str, Any]) -> Any:
        return deps["webhook"]


class ShortWait(Flow, slug="wait_short", max_attempts=1):
    @wait_step(timeout=timedelta(seconds=1))
    def reply(self) -> None: ...

    @step(depends_on=[reply])
    def after(self, deps: dict[str, Any]) -> Any:
        return deps


def states(engine: Engine, run_id: uuid.UUID) -> dict[str, str]:
    with engine.begin() as connection:
        run = get_run_with_states(connection, run_id)
    assert run is not None
    return {s.step_slug: str(s.status) for s in run.steps} | {"run": str(run.run.status)}


def wait_rows(engine: Engine, run_id: uuid.UUID) -> list[dict[str, Any]]:
    with engine.begin() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT t.step_slug, t.status, t.message_id, t.last_worker_id, w.outcome"
                " FROM pgflow.step_tasks AS t LEFT JOIN pgflow_python.waits AS w"
                " USING (run_id, step_slug, task_index) WHERE t.run_id = :r ORDER BY 1"
            ),
            {"r": run_id},
        )
        return [dict(r) for r in rows.mappings()]


def complete_root(engine: Engine, run_id: uuid.UUID, step_slug: str, output: str) -> None:
    """Finish a handler step with upstream's functions, as a (TypeScript) worker would."""
    worker_id = uuid.uuid4()
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO pgflow.workers (worker_id, queue_name, function_name)"
                " VALUES (:w, 'wait_refund', 'test')"
            ),
            {"w": worker_id},
        )
        ids = connection.execute(sa.text("SELECT msg_id FROM pgmq.read('wait_refund', 30, 10)"))
        connection.execute(
            sa.text("SELECT * FROM pgflow.start_tasks('wait_refund', :ids, :w)"),
            {"ids": [i for (i,) in ids], "w": worker_id},
        )
    with engine.begin() as connection:
        connection.execute(
            sa.text("SELECT pgflow.complete_task(:r, :s, 0, CAST(:o AS jsonb))"),
            {"r": run_id, "s": step_slug, "o": output},
        )


def test_a_waiting_step_has_no_message_and_no_worker_then_a_signal_completes_it(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, RootWait)
    run_id = start_flow(pgflow_engine, RootWait, {"order": 1})

    assert states(pgflow_engine, run_id) == {
        "webhook": "started",
        "record": "created",
        "run": "started",
    }
    [task] = wait_rows(pgflow_engine, run_id)
    assert task["status"] == "started"
    assert task["message_id"] is None
    assert task["last_worker_id"] is None
    with pgflow_engine.begin() as connection:
        queued = connection.execute(sa.text("SELECT count(*) FROM pgmq.q_wait_root")).scalar()
    assert queued == 0  # no worker of any language can read it

    result = signal(pgflow_engine, run_id, "webhook", {"paid": True})
    assert result.outcome is SignalOutcome.COMPLETED
    assert str(result.step_status) == "completed"
    assert states(pgflow_engine, run_id)["webhook"] == "completed"
    with pgflow_engine.begin() as connection:
        run = get_run_with_states(connection, run_id)
    assert run is not None
    [webhook_task] = [t for t in run.tasks if t.step_slug == "webhook"]
    assert webhook_task.output == {"paid": True}
    # The dependent step was started as after any completion: its message is queued.
    with pgflow_engine.begin() as connection:
        queued = connection.execute(sa.text("SELECT count(*) FROM pgmq.q_wait_root")).scalar()
    assert queued == 1


@pytest.mark.anyio
async def test_the_run_goes_on_after_the_signal_with_the_output_in_the_deps(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Refund)
    async with running_worker(pgflow_engine, Refund, poll_interval=0.1):
        run_id = start_flow(pgflow_engine, Refund, {"amount": 30})
        while states(pgflow_engine, run_id)["draft"] != "completed":
            await anyio.sleep(0.05)
        assert states(pgflow_engine, run_id)["approval"] == "started"
        async_engine = create_async_engine(pgflow_engine.url, poolclass=sa.pool.NullPool)
        try:
            result = await signal_async(async_engine, run_id, "approval", {"by": "ada"})
        finally:
            await async_engine.dispose()
        assert result.outcome is SignalOutcome.COMPLETED
        run = await wait_until_finished(pgflow_engine, run_id)
    assert run["status"] == "completed"
    assert run["output"] == {"pay": {"paid": 30, "by": "ada"}}


def test_an_early_signal_is_kept_and_completes_the_step_when_it_starts_waiting(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Refund)
    run_id = start_flow(pgflow_engine, Refund, {"amount": 5})
    early = signal(pgflow_engine, run_id, "approval", {"by": "early"})
    assert early.outcome is SignalOutcome.KEPT
    assert str(early.step_status) == "created"

    complete_root(pgflow_engine, run_id, "draft", '{"amount": 5}')

    assert states(pgflow_engine, run_id)["approval"] == "completed"
    assert states(pgflow_engine, run_id)["pay"] == "started"
    again = signal(pgflow_engine, run_id, "approval", {"by": "late"})
    assert again.outcome is SignalOutcome.ALREADY_SIGNALLED
    assert again.signalled_at == early.signalled_at


def test_a_signal_in_a_session_that_rolls_back_changes_nothing(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, RootWait)
    run_id = start_flow(pgflow_engine, RootWait, 1)
    with Session(pgflow_engine) as session:
        result = signal(session, run_id, "webhook", "yes")
        assert result.outcome is SignalOutcome.COMPLETED
        session.rollback()
    assert states(pgflow_engine, run_id)["webhook"] == "started"
    assert signal(pgflow_engine, run_id, "webhook", "now").outcome is SignalOutcome.COMPLETED


def test_concurrent_duplicate_signals_complete_the_step_once(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, RootWait)
    run_id = start_flow(pgflow_engine, RootWait, 1)
    barrier = threading.Barrier(8)
    outcomes: list[SignalOutcome] = []

    def send(index: int) -> None:
        with Session(pgflow_engine) as session:
            barrier.wait()
            outcomes.append(signal(session, run_id, "webhook", index).outcome)
            session.commit()

    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == sorted(
        [SignalOutcome.COMPLETED] + [SignalOutcome.ALREADY_SIGNALLED] * 7
    )
    with pgflow_engine.begin() as connection:
        completions = connection.execute(
            sa.text(
                "SELECT count(*) FROM pgflow.step_tasks WHERE run_id = :r AND step_slug = 'record'"
            ),
            {"r": run_id},
        ).scalar()
    assert completions == 1  # the dependent was started once


def test_bad_signals_are_refused_and_change_nothing(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Refund, RootWait)
    run_id = start_flow(pgflow_engine, Refund, {"amount": 1})
    with pytest.raises(SignalOutputNotJSONError, match="not JSON"):
        signal(pgflow_engine, run_id, "approval", {"when": object()})
    with pytest.raises(NotAWaitStepError, match="not a wait step") as not_wait:
        signal(pgflow_engine, run_id, "draft", 1)
    assert not_wait.value.known_step
    with pytest.raises(NotAWaitStepError, match="does not exist"):
        signal(pgflow_engine, run_id, "nope", 1)
    with pytest.raises(UnknownRunError):
        signal(pgflow_engine, uuid.uuid4(), "approval", 1)
    with pgflow_engine.begin() as connection:
        kept = connection.execute(sa.text("SELECT count(*) FROM pgflow_python.signals")).scalar()
    assert kept == 0

    done = start_flow(pgflow_engine, RootWait, 1)
    cancel_run(pgflow_engine, done, "no longer needed")
    with pytest.raises(SignalTooLateError, match="the run is failed") as late:
        signal(pgflow_engine, done, "webhook", 1)
    assert late.value.run_status == "failed"
    assert states(pgflow_engine, done)["webhook"] == "failed"


def test_the_stalled_task_sweep_leaves_waits_alone(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, RootWait)
    run_id = start_flow(pgflow_engine, RootWait, 1)
    with pgflow_engine.begin() as connection:
        recovered = connection.execute(
            sa.text("SELECT * FROM pgflow_python.recover_stalled_tasks(1, 0)")
        ).all()
    assert recovered == []
    assert wait_rows(pgflow_engine, run_id)[0]["status"] == "started"


def test_a_cancelled_wait_waits_again_after_resume(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, RootWait)
    run_id = start_flow(pgflow_engine, RootWait, 1)
    cancel_run(pgflow_engine, run_id)
    assert wait_rows(pgflow_engine, run_id)[0]["status"] == "cancelled"

    assert str(resume_run(pgflow_engine, run_id).outcome) == "resumed"
    assert states(pgflow_engine, run_id)["webhook"] == "started"
    [task] = wait_rows(pgflow_engine, run_id)
    assert task["status"] == "started"
    assert task["message_id"] is None
    assert signal(pgflow_engine, run_id, "webhook", 2).outcome is SignalOutcome.COMPLETED


@pytest.mark.anyio
async def test_a_timeout_fails_the_step_and_the_run_and_resume_waits_again(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, ShortWait)
    run_id = start_flow(pgflow_engine, ShortWait, 1)
    async with running_worker(pgflow_engine, ShortWait, deadline_check_interval=0.1):
        run = await wait_until_finished(pgflow_engine, run_id)
    assert run["status"] == "failed"
    with pgflow_engine.begin() as connection:
        view = get_run_with_states(connection, run_id)
    assert view is not None
    [reply] = [s for s in view.steps if s.step_slug == "reply"]
    assert str(reply.status) == "failed"
    assert reply.error_message is not None
    assert "timed out: no signal within" in reply.error_message
    assert wait_rows(pgflow_engine, run_id)[0]["outcome"] == "timed_out"
    with pytest.raises(SignalTooLateError):
        signal(pgflow_engine, run_id, "reply", 1)

    resume_run(pgflow_engine, run_id)
    assert states(pgflow_engine, run_id)["reply"] == "started"
    result = await anyio.to_thread.run_sync(signal, pgflow_engine, run_id, "reply", "ok")
    assert result.outcome is SignalOutcome.COMPLETED


class OptionalReview(Flow, slug="wait_optional"):
    @step
    def draft(self, input: Any) -> Any:
        return input

    @wait_step(depends_on=[draft], timeout=1, on_timeout="skip")
    def review(self) -> None: ...

    @step(depends_on=[draft, review])
    def publish(self, deps: dict[str, Any]) -> Any:
        return sorted(deps)


@pytest.mark.anyio
async def test_a_timeout_with_skip_skips_the_step_and_the_run_goes_on_without_it(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, OptionalReview)
    async with running_worker(pgflow_engine, OptionalReview, deadline_check_interval=0.1):
        run_id = start_flow(pgflow_engine, OptionalReview, "text")
        run = await wait_until_finished(pgflow_engine, run_id)
    assert run["status"] == "completed"
    assert run["output"] == {"publish": ["draft"]}  # no "review" key: it was skipped
    assert states(pgflow_engine, run_id)["review"] == "skipped"
    with pgflow_engine.begin() as connection:
        reason = connection.execute(
            sa.text("SELECT skip_reason FROM pgflow_python.step_skips WHERE run_id = :r"),
            {"r": run_id},
        ).scalar()
    assert reason == "wait_timeout"
    [review] = [t for t in wait_rows(pgflow_engine, run_id) if t["step_slug"] == "review"]
    assert (review["status"], review["outcome"]) == ("skipped", "timed_out")
    with pytest.raises(SignalTooLateError, match="the run is completed"):
        signal(pgflow_engine, run_id, "review", 1)


class Plain(Flow, slug="wait_plain"):
    @step
    def only(self, input: int) -> int:
        return input * 2


@pytest.mark.anyio
async def test_twenty_waiting_runs_hold_no_slot_of_a_worker_with_concurrency_one(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, RootWait, Plain)
    async with running_worker(pgflow_engine, RootWait, Plain, concurrency=1, poll_interval=0.1):
        waiting = [start_flow(pgflow_engine, RootWait, i) for i in range(20)]
        # Other runs go through the one slot while all twenty wait.
        for i in range(5):
            run = await wait_until_finished(pgflow_engine, start_flow(pgflow_engine, Plain, i))
            assert run["output"] == {"only": i * 2}
        assert all(states(pgflow_engine, r)["webhook"] == "started" for r in waiting)
        for i, run_id in enumerate(waiting):
            signal(pgflow_engine, run_id, "webhook", i)
        for i, run_id in enumerate(waiting):
            run = await wait_until_finished(pgflow_engine, run_id)
            assert run["output"] == {"record": i}
