"""The subflow starter under faults: a lost lock race spends no attempt, a stop gives leases
back, a slow method holds back no other start, and a method's own TimeoutError is its own
(extension/0073, pgflow/worker/_subflows.py). Faults are real: another connection takes locks."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import Context, Flow, start_flow, step, subflow
from tests.helpers.database import libpq_url, register_flows
from tests.helpers.workers import EventLog, running_worker, wait_until_finished

pytestmark = pytest.mark.anyio


class Kid(Flow, slug="starter_kid", max_attempts=1):
    @step
    def echo(self, input: Any) -> Any:
        return input


class Parent(Flow, slug="starter_parent", max_attempts=1):
    """Its method waits for the gate when the input asks it to; notes each call."""

    entered: list[tuple[str, int]] = []  # noqa: RUF012 - shared on purpose, reset by each test
    gate = threading.Event()

    @subflow(Kid)
    async def child(self, input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        Parent.entered.append((input["tag"], ctx.attempt))
        while input.get("wait") and not Parent.gate.is_set():
            await anyio.sleep(0.02)
        if input.get("raise_timeout"):
            raise TimeoutError("the payment API timed out")
        return {"tag": input["tag"]}


@pytest.fixture(autouse=True)
def fresh_parent() -> Iterator[None]:
    Parent.entered.clear()
    Parent.gate.clear()
    yield
    Parent.gate.set()


@pytest.fixture
def events() -> Iterator[EventLog]:
    log = EventLog()
    yield log
    log.close()


async def until(condition: Any, what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await anyio.sleep(0.02)
    return found


def start_child_waits_on_a_lock(conninfo: str) -> bool:
    with psycopg.connect(conninfo, autocommit=True) as connection:
        row = connection.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND wait_event_type = 'Lock' AND query LIKE '%start_child%'"
        ).fetchone()
        return row is not None


def link(engine: Engine, run_id: uuid.UUID) -> dict[str, Any]:
    with engine.begin() as connection:
        return dict(
            connection.execute(
                sa.text(
                    "SELECT start_attempts, lease_until, child_run_id, outcome"
                    " FROM pgflow_python.subflow_children WHERE run_id = :r"
                ),
                {"r": run_id},
            )
            .mappings()
            .one()
        )


async def test_a_child_start_that_deadlocks_spends_no_attempt_and_starts_later(
    pgflow_engine: Engine, events: EventLog
) -> None:
    conninfo = libpq_url(pgflow_engine.url)
    register_flows(pgflow_engine, Kid, Parent)
    async with running_worker(pgflow_engine, Parent, Kid, poll_interval=0.1):
        run_id = start_flow(pgflow_engine, Parent, {"tag": "a", "wait": True})
        await until(lambda: Parent.entered, "the method to run")
        with psycopg.connect(conninfo) as rival:
            # start_child locks the run, then the start's row; the rival holds the row, then
            # asks for the run: a cycle, and start_child (waiting longer) is the one aborted.
            rival.execute(
                "SELECT 1 FROM pgflow_python.subflow_children WHERE run_id = %s FOR UPDATE",
                (run_id,),
            ).fetchall()
            Parent.gate.set()
            await until(lambda: start_child_waits_on_a_lock(conninfo), "start_child to wait")
            await anyio.to_thread.run_sync(
                lambda: rival.execute(
                    "SELECT 1 FROM pgflow.runs WHERE run_id = %s FOR UPDATE", (run_id,)
                ).fetchall()
            )
            rival.commit()
        run = await wait_until_finished(pgflow_engine, run_id, timeout=30)
    assert run == {"status": "completed", "output": {"child": {"echo": {"tag": "a"}}}}
    [(interrupted, _)] = events.named("subflow.start_interrupted")
    assert interrupted["sqlstate"] == "40P01"
    assert not events.named("subflow.start_failed")
    assert Parent.entered == [("a", 1), ("a", 1)]  # the lost race counted no attempt
    assert link(pgflow_engine, run_id)["start_attempts"] == 1


async def test_a_stopping_worker_gives_back_the_starts_it_leased(
    pgflow_engine: Engine, events: EventLog
) -> None:
    register_flows(pgflow_engine, Kid, Parent)
    async with running_worker(pgflow_engine, Parent, Kid, poll_interval=0.1, shutdown_timeout=1):
        run_id = start_flow(pgflow_engine, Parent, {"tag": "a", "wait": True})
        await until(lambda: Parent.entered, "the method to run")
        assert link(pgflow_engine, run_id)["lease_until"] is not None
    # Due again at once, on the same attempt: the next worker need not wait out the lease.
    after = link(pgflow_engine, run_id)
    assert (after["lease_until"], after["start_attempts"], after["child_run_id"]) == (None, 0, None)
    [(released, _)] = events.named("subflow.starts_released")
    assert released["count"] == 1
    Parent.gate.set()
    async with running_worker(pgflow_engine, Parent, Kid, poll_interval=0.1):
        run = await wait_until_finished(pgflow_engine, run_id, timeout=30)
    assert run["status"] == "completed"
    assert Parent.entered == [("a", 1), ("a", 1)]


async def test_a_slow_method_holds_back_no_other_start(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Kid, Parent)
    async with running_worker(pgflow_engine, Parent, Kid, poll_interval=0.1):
        slow = start_flow(pgflow_engine, Parent, {"tag": "slow", "wait": True})
        await until(lambda: Parent.entered, "the slow method to run")
        quick = start_flow(pgflow_engine, Parent, {"tag": "quick"})
        run = await wait_until_finished(pgflow_engine, quick, timeout=30)
        assert run["status"] == "completed"
        assert link(pgflow_engine, slow)["child_run_id"] is None  # still in its method
        Parent.gate.set()
        assert (await wait_until_finished(pgflow_engine, slow, timeout=30))["status"] == (
            "completed"
        )


async def test_a_timeout_error_the_method_raises_is_reported_as_its_own(
    pgflow_engine: Engine, events: EventLog
) -> None:
    register_flows(pgflow_engine, Kid, Parent)
    async with running_worker(pgflow_engine, Parent, Kid, poll_interval=0.1):
        run_id = start_flow(pgflow_engine, Parent, {"tag": "t", "raise_timeout": True})
        run = await wait_until_finished(pgflow_engine, run_id, timeout=30)
    assert run["status"] == "failed"
    [(failed, _)] = events.named("subflow.start_failed")
    assert failed["error"] == "TimeoutError: the payment API timed out"
