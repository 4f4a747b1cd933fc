"""Outages and a busy event loop must not waste attempts or make the living look dead
(issue "Worker robustness", defects 4, 6 and 7)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import datetime
from typing import Any

import anyio
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import Context, Job
from pgflow.worker._postgres import PostgresStore
from pgflow.worker._store import RecoveredTask
from tests.helpers.database import libpq_url, register_flows
from tests.helpers.outages import database_outage
from tests.helpers.workers import EventLog, running_worker, start, tasks_of, wait_until_finished

pytestmark = pytest.mark.anyio


@pytest.fixture
def events() -> Iterator[EventLog]:
    log = EventLog()
    yield log
    log.close()


class Held(Job, slug="held", max_attempts=3):
    """Runs until the test releases it; counts its runs."""

    entered: list[int] = []  # noqa: RUF012 - shared on purpose, reset by each test
    release = threading.Event()

    async def perform(self, input: Any, ctx: Context) -> str:
        Held.entered.append(ctx.attempt)
        while not Held.release.is_set():
            await anyio.sleep(0.02)
        return "done"


@pytest.fixture(autouse=True)
def fresh_held() -> Iterator[None]:
    Held.entered.clear()
    Held.release.clear()
    yield
    Held.release.set()


async def wait_for(condition: Any, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await anyio.sleep(0.02)


@pytest.mark.slow
async def test_a_report_is_kept_through_a_long_outage_and_recorded_once(
    pgflow_engine: Engine, pgflow_database: Any, events: EventLog
) -> None:
    register_flows(pgflow_engine, Held)
    async with running_worker(pgflow_engine, Held):
        run_id = start(pgflow_engine, Held, {})
        await wait_for(lambda: Held.entered, "the handler to start")
        # Longer than the 29 s after which reports used to be abandoned: the task then sat
        # 'started' until the sweep put it back, and ran again.
        with database_outage(pgflow_database):
            Held.release.set()
            await wait_for(lambda: events.named("task.report_retry"), "a report retry")
            await anyio.sleep(32)
        run = await wait_until_finished(pgflow_engine, run_id, timeout=30)
    assert run["status"] == "completed"
    assert Held.entered == [1]
    [task] = tasks_of(pgflow_engine, run_id)
    assert task["attempts_count"] == 1
    assert not events.named("tasks.recovered")


class CountedSweeps(PostgresStore):
    """Notes when each of its sweeps for stalled tasks came back from the database."""

    def __init__(self, conninfo: str) -> None:
        super().__init__(conninfo)
        self.sweeps: list[float] = []

    async def recover(
        self, *, heartbeat_timeout: int, max_requeues: int, sweeper_ids: Sequence[uuid.UUID]
    ) -> list[RecoveredTask]:
        found = await super().recover(
            heartbeat_timeout=heartbeat_timeout, max_requeues=max_requeues, sweeper_ids=sweeper_ids
        )
        self.sweeps.append(time.monotonic())
        return found


def heard_since(engine: Engine, moment: datetime) -> bool:
    """Every serving worker heartbeated after ``moment`` (the database's clock)."""
    with engine.begin() as connection:
        return not connection.execute(
            sa.text(
                "SELECT 1 FROM pgflow.workers WHERE deprecated_at IS NULL"
                " AND last_heartbeat_at <= :moment"
            ),
            {"moment": moment},
        ).first()


async def test_after_an_outage_no_sweep_takes_tasks_from_the_living(
    pgflow_engine: Engine, pgflow_database: Any, events: EventLog
) -> None:
    register_flows(pgflow_engine, Held)
    # The holder heartbeats slowly; the other worker would sweep at once. Both sweep.
    holder: dict[str, Any] = {
        "heartbeat_interval": 1.5,
        "heartbeat_timeout": 3,
        "recovery_interval": 0.2,
    }
    sweeper: dict[str, Any] = {
        "heartbeat_interval": 0.2,
        "heartbeat_timeout": 3,
        "recovery_interval": 0.2,
    }
    store = CountedSweeps(libpq_url(pgflow_engine.url))
    async with running_worker(pgflow_engine, Held, **holder):
        run_id = start(pgflow_engine, Held, {})
        await wait_for(lambda: Held.entered, "the handler to start")
        async with running_worker(pgflow_engine, Held, store=store, **sweeper):
            # Nobody can heartbeat for longer than heartbeat_timeout...
            with database_outage(pgflow_database):
                await anyio.sleep(4.5)
            with pgflow_engine.begin() as connection:
                outage_ended = connection.execute(sa.text("SELECT clock_timestamp()")).scalar_one()
            back = time.monotonic()
            # ...and afterwards, the other worker sweeps while the living are heard again.
            await wait_for(lambda: heard_since(pgflow_engine, outage_ended), "the workers heard")
            heard = time.monotonic()
            await wait_for(
                lambda: sum(moment > heard for moment in store.sweeps) >= 3,
                "three sweeps after every worker was heard again",
            )
            Held.release.set()
            run = await wait_until_finished(pgflow_engine, run_id)
    assert sum(moment > back for moment in store.sweeps) >= 3, "the sweep did not run"
    assert run["status"] == "completed"
    assert Held.entered == [1], "the task was taken from its living worker and run again"
    assert not events.named("tasks.recovered")


class Blocking(Job, slug="blocking", max_attempts=3):
    runs: list[int] = []  # noqa: RUF012 - shared on purpose, reset by the test

    async def perform(self, input: Any, ctx: Context) -> str:
        Blocking.runs.append(ctx.attempt)
        time.sleep(4)  # the mistake this test is about: blocking the event loop
        return "done"


def sweep_until(url: str, done: threading.Event, recovered: list[Any]) -> None:
    """Another worker's stalled-task sweep, every 0.2 s, in a thread of its own."""
    with psycopg.connect(url, autocommit=True) as connection:
        while not done.wait(0.2):
            rows = connection.execute(
                "SELECT * FROM pgflow_python.recover_stalled_tasks(2, 3)"
            ).fetchall()
            recovered += rows


async def test_a_blocked_event_loop_keeps_heartbeats_going_and_is_reported(
    pgflow_engine: Engine, events: EventLog
) -> None:
    register_flows(pgflow_engine, Blocking)
    Blocking.runs.clear()
    done = threading.Event()
    recovered: list[Any] = []
    sweeper = threading.Thread(
        target=sweep_until, args=(libpq_url(pgflow_engine.url), done, recovered), daemon=True
    )
    options: dict[str, Any] = {
        "heartbeat_interval": 0.3,
        "heartbeat_timeout": 2,
        "recovery_interval": 60,
    }
    sweeper.start()
    try:
        async with running_worker(pgflow_engine, Blocking, **options):
            run_id = start(pgflow_engine, Blocking, {})
            run = await wait_until_finished(pgflow_engine, run_id)
    finally:
        done.set()
        sweeper.join(timeout=10)
    assert run["status"] == "completed"
    assert recovered == [], "the blocked worker looked dead to another worker's sweep"
    assert Blocking.runs == [1]
    blocked = [fields for fields, _ in events.named("worker.loop_blocked")]
    assert blocked, "nothing warned about the blocked event loop"
    assert any("perform[0] of run " + str(run_id) in entry for entry in blocked[0]["running"])


class BlocksPastTimeout(Job, slug="blocks_past_timeout", max_attempts=1, timeout=3):
    async def perform(self, input: Any, ctx: Context) -> str:
        time.sleep(9)  # the mistake: blocking the loop past the timeout and its grace period
        return "late"


class After(Job, slug="after_blocking", max_attempts=1):
    async def perform(self, input: Any, ctx: Context) -> str:
        return "fine"


async def test_an_async_handler_blocking_past_its_timeout_fails_as_a_timeout_and_the_worker_lives(
    pgflow_engine: Engine, events: EventLog
) -> None:
    register_flows(pgflow_engine, BlocksPastTimeout, After)
    async with running_worker(pgflow_engine, BlocksPastTimeout, After):
        blocked = start(pgflow_engine, BlocksPastTimeout, {})
        run = await wait_until_finished(pgflow_engine, blocked, timeout=40)
        after = start(pgflow_engine, After, {})
        assert (await wait_until_finished(pgflow_engine, after))["status"] == "completed"
    assert run["status"] == "failed"
    [task] = tasks_of(pgflow_engine, blocked)
    assert task["output"] is None
    assert task["error_message"].startswith(
        "TimeoutError: step 'perform' exceeded its timeout of 3s (it ran 9."
    )
    assert not events.named("task.cancellation_ignored")
    assert not events.named("worker.crashed")
    [(unblocked, _)] = events.named("worker.loop_unblocked")
    assert unblocked["blocked_for"] >= 8.5
    assert any("perform[0] of run " + str(blocked) in entry for entry in unblocked["running"])


async def test_an_outage_is_logged_once_per_activity_not_every_round(
    pgflow_engine: Engine, pgflow_database: Any, events: EventLog
) -> None:
    register_flows(pgflow_engine, Held)
    options: dict[str, Any] = {
        "cancel_check_interval": 0.1,
        "heartbeat_interval": 0.2,
        "heartbeat_timeout": 2,
        "poll_interval": 0.2,
    }
    async with running_worker(pgflow_engine, Held, **options):
        run_id = start(pgflow_engine, Held, {})
        await wait_for(lambda: Held.entered, "the handler to start")  # cancel checks run now
        with database_outage(pgflow_database):
            await wait_for(
                lambda: all(
                    events.named(name)
                    for name in (
                        "runs.cancel_check_failed",
                        "scheduler.pass_failed",
                        "worker.heartbeat_failed",
                    )
                ),
                "every activity to notice the outage",
            )
            await anyio.sleep(4)  # dozens of rounds of each
        Held.release.set()
        run = await wait_until_finished(pgflow_engine, run_id, timeout=30)
    assert run["status"] == "completed"
    for name in ("runs.cancel_check_failed", "scheduler.pass_failed", "worker.heartbeat_failed"):
        [(first, _)] = events.named(name)
        assert first["failures"] == 1
