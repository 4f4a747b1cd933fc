"""Waiting for runs: success, failure, timeout; NOTIFY wake-ups and the polling fallback."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from pgflow import RunStatus, get_run, start_flow, start_flow_and_wait, wait_for_run
from pgflow._db import create_engine
from pgflow.errors import RunFailedError, RunTimeoutError, UnknownRunError
from tests.helpers.client_flows import (
    GREETING_HANDLERS,
    Fragile,
    Greeting,
    Producer,
    Reminder,
    driving,
    explode,
    query_one,
    waiter_is_waiting,
)

# A wait that ends only at its timeout still returns a run completed by then, so the wake-up
# tests bound how long the wait took: far below TIMEOUT, far above what a wake-up takes.
TIMEOUT = 60.0
WOKEN_WITHIN = 15.0
NEVER_POLL = 2 * TIMEOUT


def without_realtime_notify(engine: Engine) -> None:
    """Make realtime.send silent, as on Supabase (its realtime does not NOTIFY)."""
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "CREATE OR REPLACE FUNCTION realtime.send(payload jsonb, event text, topic text,"
                " private boolean DEFAULT true) RETURNS void LANGUAGE sql AS $$ SELECT $$"
            )
        )


def test_start_flow_and_wait_returns_the_completed_run_with_its_output(engine: Engine) -> None:
    with driving(engine, Greeting, GREETING_HANDLERS):
        run = start_flow_and_wait(engine, Greeting, {"name": "ada lovelace"}, timeout=20)
    assert run.status is RunStatus.COMPLETED
    assert run.output == {"greeting": "Hello, Ada Lovelace!"}
    assert run.completed_at is not None


def test_a_notification_wakes_the_waiter(engine: Engine) -> None:
    run_id = uuid.uuid4()
    # The driver starts only once the waiter has seen the run started and sits waiting, so only
    # the run:completed NOTIFY can end the wait before the (never reached) next poll.
    with driving(engine, Greeting, GREETING_HANDLERS, gate=lambda: waiter_is_waiting(engine)):
        began = time.monotonic()
        run = start_flow_and_wait(
            engine,
            Greeting,
            {"name": "ada"},
            run_id=run_id,
            timeout=TIMEOUT,
            poll_interval=NEVER_POLL,
        )
        waited = time.monotonic() - began
    assert run.run_id == run_id
    assert run.output == {"greeting": "Hello, Ada!"}
    assert waited < WOKEN_WITHIN


def test_a_notified_start_and_wait_makes_two_round_trips(engine: Engine) -> None:
    """The start with LISTEN after it, then the run (once its end is announced) with UNLISTEN
    after it: no status check after the start (nothing can end a run before its start commits)
    nor before reading the ended run."""
    statements: list[str] = []
    caller = threading.get_ident()

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        if threading.get_ident() == caller:  # not the queue driver's (a thread of its own)
            statements.append(statement)

    with driving(engine, Greeting, GREETING_HANDLERS):
        # The first start of a class in a process also compares the class with the stored flow.
        start_flow_and_wait(engine, Greeting, {"name": "bob"}, timeout=TIMEOUT)
        sa.event.listen(engine, "before_cursor_execute", record)
        try:
            run = start_flow_and_wait(
                engine, Greeting, {"name": "ada"}, timeout=TIMEOUT, poll_interval=NEVER_POLL
            )
        finally:
            sa.event.remove(engine, "before_cursor_execute", record)
    assert run.output == {"greeting": "Hello, Ada!"}
    described = [
        next((line for line in s.splitlines() if line.startswith("-- description")), s.strip())
        for s in statements
    ]
    assert len(described) == 2, described
    assert described[0].startswith("-- description: Start a run unless")
    assert described[1].startswith("-- description: One run as JSON")
    assert statements[0].rstrip().endswith("LISTEN pgflow;"), statements[0]
    assert statements[1].rstrip().endswith("UNLISTEN pgflow;"), statements[1]


def test_a_read_that_finds_the_run_still_going_listens_again(engine: Engine) -> None:
    """An end announced before the run's end is visible (here: a forged run:completed) makes
    the waiter read the run with UNLISTEN; finding it still started, it LISTENs again and checks
    the status, so the real end's NOTIFY wakes it (it would never poll)."""
    run_id = uuid.uuid4()
    forged: list[bool] = []

    def status_checked() -> bool:
        return bool(
            query_one(
                engine,
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE state = 'idle'"
                " AND query LIKE '%A run''s status alone%')",
            )
        )

    def gate() -> bool:
        if not forged:
            if not waiter_is_waiting(engine):
                return False
            message = {"topic": f"pgflow:run:{run_id}", "event": "run:completed"}
            query_one(engine, "SELECT pg_notify('pgflow', :m)", m=json.dumps(message))
            forged.append(True)
            return False
        return status_checked()  # read, LISTEN again, status check: now idle and listening

    statements: list[str] = []
    caller = threading.get_ident()

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        if threading.get_ident() == caller:
            lines = statement.rstrip().splitlines()
            described = next((line for line in lines if line.startswith("-- description")), "")
            statements.append(lines[-1] if "LISTEN" in lines[-1] else described[:36])

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        with driving(engine, Greeting, GREETING_HANDLERS, gate=gate):
            began = time.monotonic()
            run = start_flow_and_wait(
                engine,
                Greeting,
                {"name": "ada"},
                run_id=run_id,
                timeout=TIMEOUT,
                poll_interval=NEVER_POLL,
            )
            waited = time.monotonic() - began
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert run.output == {"greeting": "Hello, Ada!"}
    assert waited < WOKEN_WITHIN
    assert statements[-5:] == [
        "LISTEN pgflow;",  # with the start
        "UNLISTEN pgflow;",  # with the read after the forged end
        "LISTEN pgflow;",
        "-- description: A run's status alone",
        "UNLISTEN pgflow;",  # with the read after the real end
    ], statements


def test_without_notifications_the_waiter_polls(engine: Engine) -> None:
    without_realtime_notify(engine)
    with driving(engine, Greeting, GREETING_HANDLERS, gate=lambda: waiter_is_waiting(engine)):
        began = time.monotonic()
        run = start_flow_and_wait(
            engine, Greeting, {"name": "ada"}, timeout=TIMEOUT, poll_interval=0.1
        )
        waited = time.monotonic() - began
    assert run.output == {"greeting": "Hello, Ada!"}
    assert waited < WOKEN_WITHIN


def test_listen_false_polls_only(engine: Engine) -> None:
    run_id = start_flow(engine, Greeting, {"name": "ada"})
    without_realtime_notify(engine)
    with driving(engine, Greeting, GREETING_HANDLERS, gate=lambda: waiter_is_waiting(engine)):
        began = time.monotonic()
        run = wait_for_run(engine, run_id, timeout=TIMEOUT, poll_interval=0.05, listen=False)
        waited = time.monotonic() - began
    assert run.status == "completed"
    assert waited < WOKEN_WITHIN


def test_a_failed_run_raises_with_the_failed_step_and_its_error(engine: Engine) -> None:
    with driving(engine, Fragile, {"explode": explode}), pytest.raises(RunFailedError) as raised:
        start_flow_and_wait(engine, Fragile, 41, timeout=20)
    error = raised.value
    assert error.step_slug == "explode"
    assert error.error_message == "ValueError: cannot handle 41"
    assert error.attempts == 2
    assert error.task_index == 0
    assert error.run.status is RunStatus.FAILED
    assert str(error) == (
        f"run {error.run_id} of flow 'fragile' failed: step 'explode' failed after 2 attempts: "
        "ValueError: cannot handle 41"
    )


def test_a_type_violation_names_the_step_that_fed_the_map(engine: Engine) -> None:
    handlers = {"items": lambda _task: {"not": "a list"}, "each": lambda item: item}
    with driving(engine, Producer, handlers), pytest.raises(RunFailedError) as raised:
        start_flow_and_wait(engine, Producer, None, timeout=20)
    assert raised.value.step_slug == "items"
    assert raised.value.error_message == (
        "[TYPE_VIOLATION] Map step each expects array input but dependency items produced object"
    )


def test_a_run_that_does_not_finish_in_time_raises_a_timeout(engine: Engine) -> None:
    with pytest.raises(RunTimeoutError) as raised:
        start_flow_and_wait(engine, Reminder, {"to": "ada"}, timeout=0.3, poll_interval=0.1)
    error = raised.value
    assert isinstance(error, TimeoutError)
    assert error.run.status is RunStatus.STARTED
    assert "still started after 0.3 s" in str(error)
    assert "pgflow run-worker" in str(error)
    # The run goes on in the database.
    assert get_run(engine, error.run_id) is not None


def test_waiting_for_an_unknown_or_uncommitted_run_raises(engine: Engine) -> None:
    with pytest.raises(UnknownRunError, match="does not exist"):
        wait_for_run(engine, uuid.uuid4(), timeout=5)
    with Session(engine) as session:
        run_id = start_flow(session, Greeting, {"name": "ada"})
        with pytest.raises(UnknownRunError, match="commit that transaction"):
            wait_for_run(session, run_id, timeout=5)
        session.rollback()


def test_a_session_bind_waits_on_a_connection_of_its_own(engine: Engine) -> None:
    with Session(engine) as session:
        run_id = start_flow(session, Greeting, {"name": "ada"})
        session.commit()
        with driving(engine, Greeting, GREETING_HANDLERS):
            run = wait_for_run(session, run_id, timeout=20)
    assert run.output == {"greeting": "Hello, Ada!"}


def test_start_flow_and_wait_commits_even_when_given_a_session(engine: Engine) -> None:
    with Session(engine) as session:
        with pytest.raises(RunTimeoutError) as raised:
            start_flow_and_wait(session, Greeting, {"name": "ada"}, timeout=0)
        session.rollback()
    assert get_run(engine, raised.value.run_id) is not None


def test_the_waiting_connection_goes_back_to_the_pool_unlistened(
    engine: Engine, pgflow_database: sa.URL
) -> None:
    pooled = create_engine(pgflow_database, pool_size=1, max_overflow=0)
    try:
        with driving(engine, Greeting, GREETING_HANDLERS):
            start_flow_and_wait(pooled, Greeting, {"name": "ada"}, timeout=20)
        with pooled.connect() as connection:
            channels = connection.execute(sa.text("SELECT pg_listening_channels()")).all()
        assert channels == []
        assert query_one(pooled, "SELECT 1") == 1
    finally:
        pooled.dispose()
