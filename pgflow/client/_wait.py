"""Waiting for a run to finish, woken by the realtime shim's NOTIFY, with a polling fallback.

The waiter LISTENs on channel ``pgflow`` before its first status check, so a run that ends in
between is seen either by that check or by a notification. Where ``realtime.send`` is not our
shim (Supabase) no notification comes, and the status is polled every ``poll_interval`` seconds.

Round trips of a start-and-wait that is notified: LISTEN, the start, the run (read once its end
is announced), UNLISTEN. A run started on the listening connection cannot have ended before the
start returned (no worker sees it before it commits), so no status check follows the start; a
notification of the run's end is followed by reading the run, which carries its status.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, cast

import anyio
import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pgflow import telemetry
from pgflow._binds import (
    AsyncBind,
    FlowRef,
    RunId,
    SyncBind,
    as_run_id,
    async_engine_of,
    engine_of,
)
from pgflow._db import connect, connect_async, display_url, through_pooler, unavailable
from pgflow._sql import query
from pgflow.client._read import read_run
from pgflow.client._start import prepare_start, start_run
from pgflow.errors import (
    DatabaseUnavailableError,
    RunCancelledError,
    RunFailedError,
    RunTimeoutError,
    UnknownRunError,
)
from pgflow.results import Run, RunStatus, TaskFailure

DEFAULT_TIMEOUT = 60.0
DEFAULT_POLL_INTERVAL = 1.0


def wait_for_run(
    bind: SyncBind,
    run_id: RunId,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    listen: bool = True,
) -> Run:
    """Block until the run is completed (return it, with its output) or failed (raise
    :class:`RunFailedError`); :class:`RunTimeoutError` after ``timeout`` seconds (``None``:
    no limit), :class:`UnknownRunError` if the run does not exist.

    Uses a connection of its own from the bind's engine, so a run started in a Session must be
    committed first. ``listen=False`` polls only. A connection lost while waiting (a server
    restart, a terminated backend) is reopened until the timeout; only then
    :class:`~pgflow.errors.DatabaseUnavailableError`.
    """
    waiter = _Waiter(as_run_id(run_id), timeout, poll_interval)
    return _wait_reconnecting(engine_of(bind), listen, lambda _connection: waiter)


def start_flow_and_wait(
    bind: SyncBind,
    flow: FlowRef,
    input: Any,
    *,
    run_id: RunId | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    listen: bool = True,
) -> Run:
    """Start a run, committed at once on a connection of its own (never in the caller's
    transaction, which a worker could not see), and :func:`wait_for_run` for it."""
    request = prepare_start(flow, input, run_id)
    _Waiter.check_arguments(timeout, poll_interval)

    def start(connection: Connection) -> _Waiter:
        # In autocommit the one start statement commits by itself.
        started = start_run(connection, request)
        telemetry.emit("run.started", flow=request.slug, run_id=str(started))
        return _Waiter(started, timeout, poll_interval, just_started=True)

    return _wait_reconnecting(engine_of(bind), listen, start, starting=request.slug)


async def wait_for_run_async(
    bind: AsyncBind,
    run_id: RunId,
    *,
    timeout: float | None = DEFAULT_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    listen: bool = True,
) -> Run:
    """:func:`wait_for_run` for an ``AsyncSession``, ``AsyncConnection`` or ``AsyncEngine``."""
    waiter = _Waiter(as_run_id(run_id), timeout, poll_interval)

    async def known(_connection: AsyncConnection) -> _Waiter:
        return waiter

    return await _wait_reconnecting_async(async_engine_of(bind), listen, known)


async def start_flow_and_wait_async(
    bind: AsyncBind,
    flow: FlowRef,
    input: Any,
    *,
    run_id: RunId | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    poll_interval: float = DEFAULT_POLL_INTERVAL,
    listen: bool = True,
) -> Run:
    """:func:`start_flow_and_wait` for an async bind."""
    request = prepare_start(flow, input, run_id)
    _Waiter.check_arguments(timeout, poll_interval)

    async def start(connection: AsyncConnection) -> _Waiter:
        started = await connection.run_sync(start_run, request)
        telemetry.emit("run.started", flow=request.slug, run_id=str(started))
        return _Waiter(started, timeout, poll_interval, just_started=True)

    return await _wait_reconnecting_async(
        async_engine_of(bind), listen, start, starting=request.slug
    )


# Pauses between attempts to reconnect a waiter (seconds); the last one repeats.
_RECONNECT_DELAYS = (0.1, 0.25, 0.5, 1.0, 2.0)


def _connection_lost(exc: BaseException) -> bool:
    """Whether an error means the server or the connection went away (worth reconnecting)."""
    if isinstance(exc, sa.exc.DBAPIError):
        return exc.connection_invalidated or isinstance(exc.orig, psycopg.OperationalError)
    return isinstance(exc, psycopg.OperationalError | DatabaseUnavailableError)


class _Reconnects:
    """The reconnect policy the sync and async waits share: which failures end the wait."""

    def __init__(self, url: sa.URL, starting: str | None) -> None:
        self.url = url
        self.starting = starting
        self.attempt = 0

    def pause_after(self, exc: Exception, waiter: _Waiter | None) -> float | None:
        """Seconds to wait before reconnecting; None to re-raise ``exc`` as it is; or raise
        the error that ends the wait."""
        if not _connection_lost(exc):
            return None
        if waiter is None:
            if isinstance(exc, DatabaseUnavailableError):
                return None  # could not connect at all: nothing to resume
            if self.starting is None:
                raise unavailable(self.url, exc) from exc
            # The start statement's commit may or may not have happened: retrying could start a
            # second run, so the caller decides (with run_id=, a retry is safe: RunExistsError).
            raise DatabaseUnavailableError(
                f"lost the connection to {display_url(self.url)} while starting a run of flow "
                f"{self.starting!r}: {_reason(exc)}. The run may or may not have started; pass "
                "run_id= to make a retry safe."
            ) from exc
        if waiter.remaining() <= 0:
            raise DatabaseUnavailableError(
                f"lost the connection to {display_url(self.url)} while waiting for run "
                f"{waiter.run_id} and could not reconnect within the timeout "
                f"({waiter.timeout:g} s): {_reason(exc)}"
            ) from exc
        telemetry.emit(
            "run.wait_reconnecting",
            level=logging.WARNING,
            run_id=str(waiter.run_id),
            attempt=self.attempt + 1,
            error=_reason(exc),
        )
        delay = _RECONNECT_DELAYS[min(self.attempt, len(_RECONNECT_DELAYS) - 1)]
        self.attempt += 1
        return min(delay, waiter.remaining())


def _reason(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _wait_reconnecting(
    engine: Engine,
    listen: bool,
    begin: Callable[[Connection], _Waiter],
    *,
    starting: str | None = None,
) -> Run:
    """Wait on a connection of its own; once waiting has begun, a lost connection is reopened
    (status checks are idempotent, and the first check after reconnecting sees whatever
    happened meanwhile). A server that cannot be reached at first fails at once."""
    reconnects = _Reconnects(engine.url, starting)
    waiter: _Waiter | None = None
    while True:
        try:
            with _waiting_connection(engine, listen) as (connection, driver):
                if waiter is None:
                    waiter = begin(connection)
                return _wait(connection, driver, waiter)
        except Exception as exc:
            pause = reconnects.pause_after(exc, waiter)
            if pause is None:
                raise
        time.sleep(pause)


async def _wait_reconnecting_async(
    engine: AsyncEngine,
    listen: bool,
    begin: Callable[[AsyncConnection], Awaitable[_Waiter]],
    *,
    starting: str | None = None,
) -> Run:
    reconnects = _Reconnects(engine.url, starting)
    waiter: _Waiter | None = None
    while True:
        try:
            async with _async_waiting_connection(engine, listen) as (connection, driver):
                if waiter is None:
                    waiter = await begin(connection)
                return await _wait_async(connection, driver, waiter)
        except Exception as exc:
            pause = reconnects.pause_after(exc, waiter)
            if pause is None:
                raise
        await anyio.sleep(pause)


class _Waiter:
    """The waiting policy, shared by the sync and async loops (which only do the I/O)."""

    def __init__(
        self,
        run_id: uuid.UUID,
        timeout: float | None,
        poll_interval: float,
        *,
        just_started: bool = False,
    ) -> None:
        self.check_arguments(timeout, poll_interval)
        self.run_id = run_id
        self.just_started = just_started
        """Started on the waiting connection after its LISTEN: nothing to check before the first
        notification (consumed by the first wait; a reconnected wait checks first)."""
        self.ended = False
        """A notification announced the run's end: read it at once, without a status check."""
        self.timeout = timeout
        self.poll_interval = poll_interval
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.topic = f"pgflow:run:{run_id}"

    @staticmethod
    def check_arguments(timeout: float | None, poll_interval: float) -> None:
        if timeout is not None and not (math.isfinite(timeout) and timeout >= 0):
            raise ValueError(f"timeout must be >= 0 seconds (finite) or None, got {timeout}")
        if not (math.isfinite(poll_interval) and poll_interval > 0):
            raise ValueError(f"poll_interval must be > 0 seconds (finite), got {poll_interval}")

    def first_check_needed(self, listening: bool) -> bool:
        """Whether to check the run before waiting for the first notification."""
        just_started, self.just_started = self.just_started, False
        return not (listening and just_started)

    def check(self, connection: Connection) -> Run | None:
        """The finished run, ``None`` to keep waiting, or the error that ends the wait."""
        ended, self.ended = self.ended, False
        if not ended:
            status = connection.execute(
                query("client_run_status"), {"run_id": self.run_id}
            ).scalar_one_or_none()
            if status is None:
                raise UnknownRunError(self.run_id)
            ended = RunStatus(status).is_terminal
        if ended or self.remaining() <= 0:
            run = read_run(connection, self.run_id)
            if run is None:  # deleted in between
                raise UnknownRunError(self.run_id)
            # run.completed and run.failed are announced by the worker whose report ended the
            # run (once per run), not by every client that waits for it.
            if run.status is RunStatus.FAILED:
                raise _failure(connection, run)
            if run.status is RunStatus.STARTED:
                if self.remaining() > 0:
                    return None  # announced but not visible yet: keep waiting
                raise RunTimeoutError(run, cast(float, self.timeout))
            return run
        return None

    def remaining(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def pause(self) -> float:
        return max(0.0, min(self.poll_interval, self.remaining()))

    def wakes(self, payload: str) -> bool:
        """Whether a notification may mean that this run ended (any run event but the start)."""
        try:
            message = json.loads(payload)
        except ValueError:
            return False
        if not isinstance(message, dict) or message.get("topic") != self.topic:
            return False
        event = message.get("event")
        if not (isinstance(event, str) and event.startswith("run:") and event != "run:started"):
            return False
        self.ended = event in _RUN_ENDS
        return True


# Events after which the run is read at once (others, e.g. a future run event, check the status).
_RUN_ENDS = frozenset({"run:completed", "run:failed"})


def _failure(connection: Connection, run: Run) -> RunFailedError:
    if run.cancelled:
        return RunCancelledError(run)
    row = (
        connection.execute(query("client_failed_step"), {"run_id": run.run_id})
        .mappings()
        .one_or_none()
    )
    if row is None:
        return RunFailedError(run, step_slug=None, error_message=None)
    return RunFailedError(
        run,
        step_slug=row["step_slug"],
        error_message=row["error_message"],
        task_index=row["task_index"],
        attempts=row["attempts_count"],
        failure=None if row["failure"] is None else TaskFailure.from_json(row["failure"]),
    )


def _wait(connection: Connection, driver: psycopg.Connection[Any] | None, waiter: _Waiter) -> Run:
    first = waiter.first_check_needed(driver is not None)
    while (run := waiter.check(connection) if first else None) is None:
        first = True
        if driver is None:
            time.sleep(waiter.pause())
            continue
        notifications = driver.notifies(timeout=waiter.pause())
        try:
            for notification in notifications:
                if waiter.wakes(notification.payload):
                    break
        finally:
            notifications.close()
    return run


async def _wait_async(
    connection: AsyncConnection, driver: psycopg.AsyncConnection[Any] | None, waiter: _Waiter
) -> Run:
    first = waiter.first_check_needed(driver is not None)
    while (run := await connection.run_sync(waiter.check) if first else None) is None:
        first = True
        if driver is None:
            await anyio.sleep(waiter.pause())
            continue
        notifications = driver.notifies(timeout=waiter.pause())
        try:
            async for notification in notifications:
                if waiter.wakes(notification.payload):
                    break
        finally:
            await notifications.aclose()
    return run


@contextmanager
def _waiting_connection(
    engine: Engine, listen: bool
) -> Iterator[tuple[Connection, psycopg.Connection[Any] | None]]:
    """An autocommit connection (every status check sees the latest commit; notifications are
    only delivered outside transactions), LISTENing if asked."""
    with connect(engine) as pooled:
        connection = pooled.execution_options(isolation_level="AUTOCOMMIT")
        driver = cast("psycopg.Connection[Any]", connection.connection.driver_connection)
        if not listen or through_pooler(driver):
            # Through a transaction pooler LISTEN would be accepted and then receive nothing.
            yield connection, None
            return
        connection.execute(query("listen_for_run_events"))
        try:
            yield connection, driver
        finally:
            _unlisten(connection, driver)


def _unlisten(connection: Connection, driver: psycopg.Connection[Any]) -> None:
    # A pooled connection left listening would pile up every run's notifications; one that
    # cannot be told to stop is discarded instead. An invalidated one is closed already.
    if connection.invalidated:
        return
    try:
        connection.execute(query("unlisten_run_events"))
        for _ in driver.notifies(timeout=0):
            pass
    except (sa.exc.SQLAlchemyError, psycopg.Error):
        connection.invalidate()


@asynccontextmanager
async def _async_waiting_connection(
    engine: AsyncEngine, listen: bool
) -> AsyncIterator[tuple[AsyncConnection, psycopg.AsyncConnection[Any] | None]]:
    pooled = await connect_async(engine)
    try:
        connection = await pooled.execution_options(isolation_level="AUTOCOMMIT")
        raw = await connection.get_raw_connection()
        driver = cast("psycopg.AsyncConnection[Any]", raw.driver_connection)
        if not listen or through_pooler(driver):
            yield connection, None
            return
        await connection.execute(query("listen_for_run_events"))
        try:
            yield connection, driver
        finally:
            # Shielded: a cancelled waiter must still not leave a pooled connection listening.
            with anyio.CancelScope(shield=True):
                await _unlisten_async(connection, driver)
    finally:
        with anyio.CancelScope(shield=True):
            await pooled.close()


async def _unlisten_async(
    connection: AsyncConnection, driver: psycopg.AsyncConnection[Any]
) -> None:
    if connection.invalidated:
        return
    try:
        await connection.execute(query("unlisten_run_events"))
        async for _ in driver.notifies(timeout=0):
            pass
    except (sa.exc.SQLAlchemyError, psycopg.Error):
        await connection.invalidate()
