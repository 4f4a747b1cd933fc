"""The async client (AsyncSession, AsyncConnection, AsyncEngine on psycopg) on real PostgreSQL."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from pgflow import (
    RunStatus,
    StepStatus,
    enqueue_async,
    get_run,
    get_run_async,
    get_run_with_states_async,
    start_flow_and_wait_async,
    start_flow_async,
    wait_for_run_async,
)
from pgflow.errors import (
    FlowNotRegisteredError,
    MapInputNotArrayError,
    RunFailedError,
    RunTimeoutError,
    UnknownRunError,
)
from tests.helpers.client_flows import (
    GREETING_HANDLERS,
    SQUARES_HANDLERS,
    Fragile,
    Greeting,
    Reminder,
    Squares,
    driving,
    explode,
    queue_length,
    run_count,
    waiter_is_waiting,
)

pytestmark = pytest.mark.anyio

TIMEOUT = 60.0
WOKEN_WITHIN = 15.0  # see test_client_wait.py


@pytest.fixture
async def async_engine(engine: Engine, pgflow_database: URL) -> AsyncIterator[AsyncEngine]:
    created = create_async_engine(
        pgflow_database.set(drivername="postgresql+psycopg"), poolclass=sa.pool.NullPool
    )
    try:
        yield created
    finally:
        await created.dispose()


async def test_a_run_started_in_an_async_session_exists_only_once_committed(
    engine: Engine, async_engine: AsyncEngine
) -> None:
    async with AsyncSession(async_engine) as session:
        committed = await start_flow_async(session, Greeting, {"name": "ada"})
        assert await get_run_async(session, committed) is not None
        assert get_run(engine, committed) is None
        await session.commit()
        rolled_back = await start_flow_async(session, Greeting, {"name": "bob"})
        await session.rollback()
    assert get_run(engine, committed) is not None
    assert get_run(engine, rolled_back) is None
    assert queue_length(engine, "greeting") == 1


async def test_async_connection_and_engine_binds(engine: Engine, async_engine: AsyncEngine) -> None:
    async with async_engine.connect() as connection:
        rolled_back = await start_flow_async(connection, Greeting, {"name": "ada"})
        await connection.rollback()
        committed = await start_flow_async(connection, Greeting, {"name": "bob"})
        await connection.commit()
    from_engine = await start_flow_async(async_engine, "greeting", {"name": "cy"})
    assert get_run(engine, rolled_back) is None
    assert get_run(engine, committed) is not None
    assert get_run(engine, from_engine) is not None


async def test_async_errors_leave_the_session_usable(
    engine: Engine, async_engine: AsyncEngine
) -> None:
    async with AsyncSession(async_engine) as session:
        with pytest.raises(FlowNotRegisteredError, match="alembic upgrade heads"):
            await start_flow_async(session, "not_there", {})
        with pytest.raises(MapInputNotArrayError, match="got a string"):
            await start_flow_async(session, "squares", "1, 2")
        await start_flow_async(session, Squares, [1, 2])
        await session.commit()
    assert run_count(engine) == 1


async def test_enqueue_async_with_a_delay(engine: Engine, async_engine: AsyncEngine) -> None:
    async with AsyncSession(async_engine) as session:
        run_id = await enqueue_async(session, Reminder, {"to": "ada"}, delay=30)
        await session.commit()
    run = await get_run_async(async_engine, run_id)
    assert run is not None
    async with async_engine.connect() as connection:
        readable = await connection.scalar(
            sa.text("SELECT count(*) FROM pgmq.read('reminder', 30, 10)")
        )
        hidden_for = await connection.scalar(
            sa.text("SELECT extract(epoch FROM min(vt) - :since) FROM pgmq.q_reminder"),
            {"since": run.started_at},
        )
        await connection.rollback()
    assert readable == 0
    assert float(hidden_for) >= 30


async def test_get_run_with_states_async(engine: Engine, async_engine: AsyncEngine) -> None:
    assert await get_run_with_states_async(async_engine, uuid.uuid4()) is None
    run_id = await start_flow_async(async_engine, Squares, [2, 3])
    with driving(engine, Squares, SQUARES_HANDLERS):
        await wait_for_run_async(async_engine, run_id, timeout=20)
    states = await get_run_with_states_async(async_engine, run_id)
    assert states is not None
    assert states.run.output == {"total": 13}
    assert [s.status for s in states.steps] == [StepStatus.COMPLETED, StepStatus.COMPLETED]
    assert [t.output for t in states.tasks_of("square")] == [4, 9]


async def test_start_flow_and_wait_async_is_woken_by_the_notification(
    engine: Engine, async_engine: AsyncEngine
) -> None:
    with driving(engine, Greeting, GREETING_HANDLERS, gate=lambda: waiter_is_waiting(engine)):
        began = time.monotonic()
        run = await start_flow_and_wait_async(
            async_engine, Greeting, {"name": "ada"}, timeout=TIMEOUT, poll_interval=2 * TIMEOUT
        )
        waited = time.monotonic() - began
    assert run.status is RunStatus.COMPLETED
    assert run.output == {"greeting": "Hello, Ada!"}
    assert waited < WOKEN_WITHIN


async def test_a_notified_start_and_wait_async_makes_two_round_trips(
    engine: Engine, async_engine: AsyncEngine
) -> None:
    """As the sync one: the start with LISTEN after it, the ended run with UNLISTEN after it."""
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement.rstrip())

    with driving(engine, Greeting, GREETING_HANDLERS):
        await start_flow_and_wait_async(async_engine, Greeting, {"name": "bob"}, timeout=TIMEOUT)
        sa.event.listen(async_engine.sync_engine, "before_cursor_execute", record)
        try:
            run = await start_flow_and_wait_async(
                async_engine, Greeting, {"name": "ada"}, timeout=TIMEOUT, poll_interval=2 * TIMEOUT
            )
        finally:
            sa.event.remove(async_engine.sync_engine, "before_cursor_execute", record)
    assert run.output == {"greeting": "Hello, Ada!"}
    assert len(statements) == 2, statements
    assert "-- description: Start a run unless" in statements[0]
    assert statements[0].endswith("\nLISTEN pgflow;")
    assert "-- description: One run as JSON" in statements[1]
    assert statements[1].endswith("\nUNLISTEN pgflow;")


@pytest.mark.parametrize("listen", [True, False])
async def test_wait_for_run_async_polls_without_notifications(
    engine: Engine, async_engine: AsyncEngine, listen: bool
) -> None:
    with engine.begin() as connection:  # as on Supabase: realtime.send does not NOTIFY
        connection.execute(
            sa.text(
                "CREATE OR REPLACE FUNCTION realtime.send(payload jsonb, event text, topic text,"
                " private boolean DEFAULT true) RETURNS void LANGUAGE sql AS $$ SELECT $$"
            )
        )
    run_id = await start_flow_async(async_engine, Greeting, {"name": "ada"})
    with driving(engine, Greeting, GREETING_HANDLERS, gate=lambda: waiter_is_waiting(engine)):
        began = time.monotonic()
        run = await wait_for_run_async(
            async_engine, run_id, timeout=TIMEOUT, poll_interval=0.05, listen=listen
        )
        waited = time.monotonic() - began
    assert run.output == {"greeting": "Hello, Ada!"}
    assert waited < WOKEN_WITHIN


async def test_async_failure_timeout_and_unknown_run(
    engine: Engine, async_engine: AsyncEngine
) -> None:
    with driving(engine, Fragile, {"explode": explode}), pytest.raises(RunFailedError) as failed:
        await start_flow_and_wait_async(async_engine, Fragile, 7, timeout=20)
    assert (failed.value.step_slug, failed.value.error_message) == (
        "explode",
        "ValueError: cannot handle 7",
    )
    with pytest.raises(RunTimeoutError, match=r"still started after 0\.2 s"):
        await start_flow_and_wait_async(async_engine, Reminder, {}, timeout=0.2, poll_interval=0.05)
    with pytest.raises(UnknownRunError):
        await wait_for_run_async(async_engine, uuid.uuid4())


async def test_an_async_session_bind_waits_on_its_engine(
    engine: Engine, async_engine: AsyncEngine
) -> None:
    async with AsyncSession(async_engine) as session:
        run_id = await start_flow_async(session, Greeting, {"name": "ada"})
        await session.commit()
        with driving(engine, Greeting, GREETING_HANDLERS):
            run = await wait_for_run_async(session, run_id, timeout=20)
    assert run.output == {"greeting": "Hello, Ada!"}


async def test_a_cancelled_waiter_returns_its_connection_unlistened(
    engine: Engine, pgflow_database: URL
) -> None:
    pooled = create_async_engine(
        pgflow_database.set(drivername="postgresql+psycopg"), pool_size=1, max_overflow=0
    )
    try:
        run_id = await start_flow_async(pooled, Reminder, {"to": "ada"})
        with anyio.move_on_after(0.3) as scope:
            await wait_for_run_async(pooled, run_id, timeout=None)
        assert scope.cancelled_caught
        async with pooled.connect() as connection:
            channels = (await connection.execute(sa.text("SELECT pg_listening_channels()"))).all()
        assert channels == []
    finally:
        await pooled.dispose()
