"""One bad task, message or database fault fails only itself: the worker keeps serving.

Each test here used to take the worker down (issue "Worker robustness", defects 1 and 3) or
waste an attempt (defect 5); the next run afterwards proves the worker still serves.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import Context, Flow, Job, step
from pgflow.cron import Cron
from pgflow.definition import FlowDefinition
from pgflow.errors import FlowNotReadyError, WorkerCrashedError
from pgflow.schedules import create_schedule
from pgflow.worker import ServiceContext, Worker
from pgflow.worker._postgres import PostgresStore
from pgflow.worker._store import ClaimedTask, ConnectionLost, SchedulerPass
from tests.helpers.database import libpq_url, register_flows
from tests.helpers.workers import (
    EventLog,
    running_worker,
    start,
    tasks_of,
    wait_until_finished,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def events() -> Iterator[EventLog]:
    log = EventLog()
    yield log
    log.close()


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


class Poison(Job, slug="poison", max_attempts=1):
    def perform(self, kind: str, ctx: Context) -> Any:
        if kind == "surrogate output":
            return "bad \ud800"
        if kind == "surrogate error":
            raise ValueError("bad \ud800")
        if kind == "nul error":
            raise ValueError("a\x00b")
        if kind == "deep output":
            return nested(5000)
        if kind == "huge error":
            raise ValueError("x" * 100_000)
        if kind == "refused error":
            raise ValueError("refuse me")
        return "fine"


class Cancelling(Job, slug="cancelling", max_attempts=1):
    async def perform(self, input: Any, ctx: Context) -> Any:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.cancel()
        await future  # raises CancelledError, which nobody asked the worker for
        return "unreachable"


def error_of(engine: Engine, run_id: uuid.UUID) -> str:
    [task] = tasks_of(engine, run_id)
    assert task["status"] == "failed", task
    message: str = task["error_message"]
    return message


async def test_poisoned_outcomes_fail_only_their_own_task(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Poison, Cancelling)
    kinds = ["surrogate output", "surrogate error", "nul error", "deep output", "huge error"]
    # Queued before the worker starts, so one claim takes the poisoned and the healthy tasks
    # together and their outcomes are reported side by side.
    runs = {kind: start(pgflow_engine, Poison, kind) for kind in kinds}
    neighbours = [start(pgflow_engine, Poison, "healthy") for _ in range(3)]
    cancelled = start(pgflow_engine, Cancelling, {})
    async with running_worker(pgflow_engine, Poison, Cancelling, concurrency=10, batch_size=10):
        for run_id in [*runs.values(), cancelled]:
            assert (await wait_until_finished(pgflow_engine, run_id))["status"] == "failed"
        for run_id in neighbours:
            assert (await wait_until_finished(pgflow_engine, run_id))["status"] == "completed"
        # ...and the worker still serves.
        healthy = start(pgflow_engine, Poison, "healthy")
        assert (await wait_until_finished(pgflow_engine, healthy))["status"] == "completed"
    with pgflow_engine.begin() as connection:
        # A claim starts its tasks at its transaction's now(): one claim, one started_at.
        claims = connection.execute(
            sa.text(
                "SELECT count(DISTINCT started_at), count(*) FROM pgflow.step_tasks"
                " WHERE run_id = ANY(:ids)"
            ),
            {"ids": [*runs.values(), *neighbours]},
        ).one()
    assert tuple(claims) == (1, 8), "the poisoned and healthy tasks were not claimed together"
    assert "returned a value that is not JSON" in error_of(pgflow_engine, runs["surrogate output"])
    assert error_of(pgflow_engine, runs["surrogate error"]) == "ValueError: bad \\ud800"
    assert error_of(pgflow_engine, runs["nul error"]) == "ValueError: ab"
    assert "nested too deeply" in error_of(pgflow_engine, runs["deep output"])
    huge = error_of(pgflow_engine, runs["huge error"])
    assert len(huge) < 8100
    assert huge.endswith("more characters cut)")
    assert "a cancellation the worker did not request" in error_of(pgflow_engine, cancelled)


class Packing(Flow, slug="pack_order", max_attempts=1):
    @step
    def pack(self, input: Any) -> str:
        return "packed"


async def test_a_step_the_class_lacks_fails_only_its_task_and_names_the_fix(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Packing, Poison)
    async with running_worker(pgflow_engine, Packing, Poison):
        # Deploy order "migrate, then roll out code": the database gains a step that this
        # (old) worker's class does not have.
        with pgflow_engine.begin() as connection:
            connection.execute(sa.text("SELECT pgflow.add_step('pack_order', 'weigh', '{pack}')"))
        run_id = start(pgflow_engine, Packing, {})
        assert (await wait_until_finished(pgflow_engine, run_id))["status"] == "failed"
        healthy = start(pgflow_engine, Poison, "healthy")
        assert (await wait_until_finished(pgflow_engine, healthy))["status"] == "completed"
    tasks = {t["step_slug"]: t for t in tasks_of(pgflow_engine, run_id)}
    assert tasks["pack"]["status"] == "completed"
    message = tasks["weigh"]["error_message"]
    assert "step 'weigh'" in message
    assert "does not define" in message
    assert "deploy the code that defines the step" in message


async def test_a_database_error_while_recording_a_failure_fails_only_that_task(
    pgflow_engine: Engine, events: EventLog
) -> None:
    register_flows(pgflow_engine, Poison)
    with pgflow_engine.begin() as connection:
        # The database refuses one error text (a check, a trigger): not a lost connection.
        connection.execute(
            sa.text("""
            CREATE FUNCTION public.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.error_message LIKE '%refuse me%' THEN
                    RAISE EXCEPTION 'this text is not welcome' USING ERRCODE = 'check_violation';
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_poison BEFORE UPDATE ON pgflow.step_tasks
            FOR EACH ROW EXECUTE FUNCTION public.refuse_poison();
            """)
        )
    async with running_worker(pgflow_engine, Poison):
        refused = start(pgflow_engine, Poison, "refused error")
        assert (await wait_until_finished(pgflow_engine, refused))["status"] == "failed"
        healthy = start(pgflow_engine, Poison, "healthy")
        assert (await wait_until_finished(pgflow_engine, healthy))["status"] == "completed"
    message = error_of(pgflow_engine, refused)
    assert message.startswith("the worker could not record this attempt's error (CheckViolation")
    assert not events.named("task.report_failed")


class Counted(Job, slug="counted", max_attempts=1):
    calls: dict[str, int] = {}  # noqa: RUF012 - shared on purpose, reset by the test

    def perform(self, input: Any, ctx: Context) -> str:
        Counted.calls[input] = Counted.calls.get(input, 0) + 1
        return "done"


class LosingClaimReplies(PostgresStore):
    """The first claim that returns tasks commits, then its reply is lost on the way back."""

    def __init__(self, conninfo: str) -> None:
        super().__init__(conninfo)
        self.lost: list[ClaimedTask] = []

    async def claim(
        self, flow_slug: str, worker_id: uuid.UUID, *, quantity: int, reservation: int, margin: int
    ) -> list[ClaimedTask]:
        tasks = await super().claim(
            flow_slug, worker_id, quantity=quantity, reservation=reservation, margin=margin
        )
        if tasks and not self.lost:
            self.lost = tasks
            raise ConnectionLost("server closed the connection unexpectedly (reply lost)")
        return tasks


async def test_a_lost_claim_reply_gives_the_tasks_back_without_spending_an_attempt(
    pgflow_engine: Engine, events: EventLog
) -> None:
    register_flows(pgflow_engine, Counted)
    Counted.calls.clear()
    store = LosingClaimReplies(libpq_url(pgflow_engine.url))
    async with running_worker(pgflow_engine, Counted, store=store):
        run_id = start(pgflow_engine, Counted, "once")
        run = await wait_until_finished(pgflow_engine, run_id)
    assert store.lost, "the fault was not injected"
    # max_attempts=1: had the lost claim spent the attempt, the run would have failed unrun.
    assert run["status"] == "completed"
    assert Counted.calls == {"once": 1}
    [task] = tasks_of(pgflow_engine, run_id)
    assert task["attempts_count"] == 1
    [(released, _)] = events.named("tasks.released")
    assert released["tasks"][0]["run_id"] == str(run_id)


async def test_a_message_whose_task_cannot_start_does_not_block_its_queue(
    pgflow_engine: Engine, events: EventLog
) -> None:
    register_flows(pgflow_engine, Poison)
    poisoned = start(pgflow_engine, Poison, "healthy")
    with pgflow_engine.begin() as connection:
        message_id = connection.execute(
            sa.text("SELECT message_id FROM pgflow.step_tasks WHERE run_id = :id"),
            {"id": poisoned},
        ).scalar_one()
        # What start_tasks does for a fan-in whose input exceeds jsonb's 256 MB: fail, for this
        # message only. Here the claim's reservation of the message fails (a read's short
        # reservation and fail_task's retry delay pass).
        connection.execute(
            sa.text(f"""
            CREATE FUNCTION public.poison_message() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                RAISE EXCEPTION 'total size of jsonb object elements exceeds the maximum'
                    USING ERRCODE = 'program_limit_exceeded';
            END $$;
            CREATE TRIGGER poison_message BEFORE UPDATE ON pgmq.q_poison
            FOR EACH ROW WHEN (NEW.msg_id = {int(message_id)}
                               AND NEW.vt > now() + interval '30 seconds')
            EXECUTE FUNCTION public.poison_message();
            """)
        )
    others = [start(pgflow_engine, Poison, "healthy") for _ in range(5)]
    async with running_worker(pgflow_engine, Poison):
        for run_id in others:
            assert (await wait_until_finished(pgflow_engine, run_id))["status"] == "completed"
        assert (await wait_until_finished(pgflow_engine, poisoned))["status"] == "failed"
    message = error_of(pgflow_engine, poisoned)
    assert message.startswith("the task could not be started, so its handler never ran: ")
    assert "exceeds the maximum" in message
    [(rejected, _)] = events.named("task.rejected")
    assert rejected["run_id"] == str(poisoned)


class BrokenService:
    """A background service with a bug: serving must end as a crash."""

    async def run(self, session: ServiceContext) -> None:
        await anyio.sleep(0.5)
        raise RuntimeError("bug in a service")


def worker_backends(engine: Engine) -> list[str]:
    with engine.begin() as connection:
        return list(
            connection.execute(
                sa.text(
                    "SELECT application_name FROM pg_stat_activity WHERE datname ="
                    " current_database() AND application_name LIKE 'pgflow-worker:%'"
                )
            ).scalars()
        )


async def test_a_crash_is_logged_raised_and_leaves_no_thread_or_connection_behind(
    pgflow_engine: Engine, events: EventLog
) -> None:
    register_flows(pgflow_engine, Poison)
    worker = Worker([Poison], pgflow_engine, services=[BrokenService()])
    with pytest.raises(WorkerCrashedError, match="bug in a service"):
        await worker.serve()
    [(crashed, _)] = events.named("worker.crashed")
    assert crashed["error"] == "RuntimeError: bug in a service"
    assert not events.named("worker.stopped")
    # The LISTEN and heartbeat threads end (the LISTEN one used to loop until stop()), and
    # with them every connection of the worker.
    deadline = time.monotonic() + 10
    while backends := worker_backends(pgflow_engine):
        assert time.monotonic() < deadline, f"still connected: {backends}"
        await anyio.sleep(0.1)


class CountingStore(PostgresStore):
    """A real store that counts the calls its checks and services make."""

    def __init__(self, conninfo: str) -> None:
        super().__init__(conninfo)
        self.counts: Counter[str] = Counter()

    async def check_flows(
        self, definitions: Sequence[FlowDefinition], *, compile_missing: bool
    ) -> None:
        self.counts["check_flows"] += 1
        await super().check_flows(definitions, compile_missing=compile_missing)

    async def refresh_statistics(self, queue_names: Sequence[str]) -> list[str]:
        self.counts["refresh_statistics"] += 1
        return await super().refresh_statistics(queue_names)

    async def fire_schedules(self, *, fired_by: str, limit: int) -> SchedulerPass:
        done = await super().fire_schedules(fired_by=fired_by, limit=limit)
        self.counts["fired"] += len(done.fired)
        return done


class NeverRegistered(Job, slug="never_registered"):
    def perform(self, input: Any, ctx: Context) -> None:
        return None


async def test_a_store_subclass_runs_with_every_check_and_service(pgflow_engine: Engine) -> None:
    # The start-up checks go through the store: an unregistered flow is refused.
    refused = CountingStore(libpq_url(pgflow_engine.url))
    with pytest.raises(FlowNotReadyError, match="never_registered"):
        await Worker([NeverRegistered], pgflow_engine, store=refused).serve()
    assert refused.counts["check_flows"] == 1

    register_flows(pgflow_engine, Counted)
    Counted.calls.clear()
    create_schedule(pgflow_engine, Counted, Cron("* * * * * *", input="tick"))
    store = CountingStore(libpq_url(pgflow_engine.url))
    async with running_worker(pgflow_engine, Counted, store=store):
        with anyio.fail_after(20):
            while not (store.counts["fired"] and Counted.calls.get("tick")):
                await anyio.sleep(0.05)
    assert store.counts["check_flows"] == 1
    assert store.counts["refresh_statistics"] >= 1  # the upkeep offers once at start
