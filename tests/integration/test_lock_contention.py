"""A report or a child start that loses a race for a lock (deadlock 40P01, serialization failure
40001, lock timeout 55P03) rolled back whole: it is retried, never taken for the handler's or the
method's failure. The faults are real: another connection takes the locks."""

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
from sqlalchemy.engine import Engine

from pgflow import Context, Job
from pgflow.worker._postgres import PostgresStore
from tests.helpers.database import libpq_url, register_flows
from tests.helpers.workers import EventLog, running_worker, start, tasks_of, wait_until_finished

pytestmark = pytest.mark.anyio


class Gated(Job, slug="gated", max_attempts=3):
    """Runs until the test opens the gate; counts its runs."""

    entered: list[int] = []  # noqa: RUF012 - shared on purpose, reset by each test
    gate = threading.Event()

    async def perform(self, input: Any, ctx: Context) -> dict[str, str]:
        Gated.entered.append(ctx.attempt)
        while not Gated.gate.is_set():
            await anyio.sleep(0.02)
        return {"answer": "kept"}


@pytest.fixture(autouse=True)
def fresh_gate() -> Iterator[None]:
    Gated.entered.clear()
    Gated.gate.clear()
    yield
    Gated.gate.set()


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


def report_waits_on_a_lock(conninfo: str) -> bool:
    with psycopg.connect(conninfo, autocommit=True) as connection:
        row = connection.execute(
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'pgflow-worker:report' AND wait_event_type = 'Lock'"
        ).fetchone()
        return row is not None


def lock_task_row(connection: psycopg.Connection[Any], run_id: uuid.UUID) -> None:
    connection.execute(
        "SELECT 1 FROM pgflow.step_tasks WHERE run_id = %s FOR UPDATE", (run_id,)
    ).fetchall()


async def test_a_completion_that_deadlocks_is_retried_and_keeps_the_output(
    pgflow_engine: Engine, events: EventLog
) -> None:
    conninfo = libpq_url(pgflow_engine.url)
    register_flows(pgflow_engine, Gated)
    async with running_worker(pgflow_engine, Gated):
        run_id = start(pgflow_engine, Gated, {})
        await until(lambda: Gated.entered, "the handler to start")
        with psycopg.connect(conninfo) as rival:
            # The completion locks the run, then the task; the rival holds the task, then
            # asks for the run: a cycle. The completion, waiting longer, is the one aborted.
            lock_task_row(rival, run_id)
            Gated.gate.set()
            await until(lambda: report_waits_on_a_lock(conninfo), "the completion to wait")
            await anyio.to_thread.run_sync(
                lambda: rival.execute(
                    "SELECT 1 FROM pgflow.runs WHERE run_id = %s FOR UPDATE", (run_id,)
                ).fetchall()
            )
            rival.commit()
        run = await wait_until_finished(pgflow_engine, run_id, timeout=30)
    retries = [fields for fields, _ in events.named("task.report_retry")]
    assert [fields.get("sqlstate") for fields in retries] == ["40P01"]
    assert run["status"] == "completed"
    assert run["output"] == {"perform": {"answer": "kept"}}
    [task] = tasks_of(pgflow_engine, run_id)
    assert (task["status"], task["attempts_count"], task["output"]) == (
        "completed",
        1,
        {"answer": "kept"},
    )
    assert Gated.entered == [1]
    assert not events.named("task.failed")


async def test_a_completion_that_times_out_on_a_lock_waits_for_it(
    pgflow_engine: Engine, events: EventLog
) -> None:
    conninfo = libpq_url(pgflow_engine.url)
    register_flows(pgflow_engine, Gated)
    impatient = conninfo + ("&" if "?" in conninfo else "?") + "options=-c%20lock_timeout%3D100"
    async with running_worker(pgflow_engine, Gated, store=PostgresStore(impatient)):
        run_id = start(pgflow_engine, Gated, {})
        await until(lambda: Gated.entered, "the handler to start")
        with psycopg.connect(conninfo) as holder:
            lock_task_row(holder, run_id)
            Gated.gate.set()
            await until(lambda: len(events.named("task.report_retry")) >= 2, "two retries")
            holder.commit()
        run = await wait_until_finished(pgflow_engine, run_id, timeout=30)
    retries = [fields for fields, _ in events.named("task.report_retry")]
    assert {fields.get("sqlstate") for fields in retries} == {"55P03"}
    [task] = tasks_of(pgflow_engine, run_id)
    assert (task["status"], task["attempts_count"], task["output"]) == (
        "completed",
        1,
        {"answer": "kept"},
    )
    assert run["output"] == {"perform": {"answer": "kept"}}
    assert not events.named("task.failed")
