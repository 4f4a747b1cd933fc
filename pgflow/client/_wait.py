"""Waiting for a run to finish, woken by the realtime shim's NOTIFY, with a polling fallback.

The waiter LISTENs on channel ``pgflow`` before its first status check, so a run that ends in
between is seen either by that check or by a notification. Where ``realtime.send`` is not our
shim (Supabase) no notification comes, and the status is polled every ``poll_interval`` seconds.

Round trips of a start-and-wait that is notified: two. The start with LISTEN after it (one
message, one transaction: the LISTEN is in effect from the start's commit, before any worker can
see the run), then, once the run's end is announced, the run read with UNLISTEN after it
(``_batched``). No status check follows the start (the run cannot have ended before it returned)
and none precedes the read (it carries the status). Should the read show the run still going,
the waiter LISTENs again and checks the status before it waits.
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
from pgflow.client._batched import execute_then
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
    return _wait_reconnecting(engine_of(bind), listen, lambda _connection, _channel: waiter)


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

    def start(connection: Connection, channel: _Channel) -> _Waiter:
        # In autocommit the start (with the LISTEN after it) commits by itself.
        started = start_run(connection, request, then=channel.listen_now())
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

    async def known(_connection: AsyncConnection, _channel: _Channel) -> _Waiter:
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

    async def start(connection: AsyncConnection, channel: _Channel) -> _Waiter:
        started = await connection.run_sync(start_run, request, then=channel.listen_now())
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
    begin: Callable[[Connection, _Channel], _Waiter],
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
            with _waiting_connection(engine, listen) as (connection, driver, channel):
                if waiter is None:
                    waiter = begin(connection, channel)
                return _wait(connection, driver, channel, waiter)
        except Exception as exc:
            pause = reconnects.pause_after(exc, waiter)
            if pause is None:
                raise
        time.sleep(pause)


async def _wait_reconnecting_async(
    engine: AsyncEngine,
    listen: bool,
    begin: Callable[[AsyncConnection, _Channel], Awaitable[_Waiter]],
    *,
    starting: str | None = None,
) -> Run:
    reconnects = _Reconnects(engine.url, starting)
    waiter: _Waiter | None = None
    while True:
        try:
            async with _async_waiting_connection(engine, listen) as (
                connection,
                driver,
                channel,
            ):
                if waiter is None:
                    waiter = await begin(connection, channel)
                return await _wait_async(connection, driver, channel, waiter)
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

    def check(self, connection: Connection, channel: _Channel) -> Run | None:
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
            run = _read_run(connection, channel, self.run_id)
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


class _Channel:
    """Whether the waiting connection wants notifications and whether it LISTENs now."""

    def __init__(self, wanted: bool) -> None:
        self.wanted = wanted
        self.listening = False

    def listen_now(self) -> str | None:
        """The query to send with the next statement to LISTEN, if wanted and not listening
        (counted as listening from then on: on a failed statement the UNLISTEN is harmless)."""
        if not self.wanted or self.listening:
            return None
        self.listening = True
        return "listen_for_run_events"


def _read_run(connection: Connection, channel: _Channel, run_id: uuid.UUID) -> Run | None:
    """The run; UNLISTENing in the same round trip (the wait is most likely over)."""
    if not channel.listening:
        return read_run(connection, run_id)
    channel.listening = False
    row = execute_then(
        connection, "client_get_run", "unlisten_run_events", {"run_id": run_id}
    ).one_or_none()
    return None if row is None else Run.from_json(row.run)


def _listen_again(connection: Connection, channel: _Channel) -> bool:
    """LISTEN if the read of a run that was still going stopped it; whether it did."""
    then = channel.listen_now()
    if then is not None:
        connection.execute(query(then))
    return then is not None


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


def _wait(
    connection: Connection,
    driver: psycopg.Connection[Any] | None,
    channel: _Channel,
    waiter: _Waiter,
) -> Run:
    _listen_again(connection, channel)  # waiting for a known run, or after a reconnect
    first = waiter.first_check_needed(driver is not None)
    while (run := waiter.check(connection, channel) if first else None) is None:
        first = True
        if _listen_again(connection, channel):
            continue  # check the status now that LISTEN is in effect
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
    connection: AsyncConnection,
    driver: psycopg.AsyncConnection[Any] | None,
    channel: _Channel,
    waiter: _Waiter,
) -> Run:
    await connection.run_sync(_listen_again, channel)
    first = waiter.first_check_needed(driver is not None)
    while (run := await connection.run_sync(waiter.check, channel) if first else None) is None:
        first = True
        if await connection.run_sync(_listen_again, channel):
            continue
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
) -> Iterator[tuple[Connection, psycopg.Connection[Any] | None, _Channel]]:
    """An autocommit connection (every status check sees the latest commit; notifications are
    only delivered outside transactions), to LISTEN on if asked: the LISTEN rides on the next
    statement (``_Channel``); the connection goes back to the pool unlistened."""
    with connect(engine) as pooled:
        connection = pooled.execution_options(isolation_level="AUTOCOMMIT")
        driver = cast("psycopg.Connection[Any]", connection.connection.driver_connection)
        if not listen or through_pooler(driver):
            # Through a transaction pooler LISTEN would be accepted and then receive nothing.
            yield connection, None, _Channel(wanted=False)
            return
        channel = _Channel(wanted=True)
        try:
            yield connection, driver, channel
        finally:
            _unlisten(connection, driver, channel)


def _unlisten(connection: Connection, driver: psycopg.Connection[Any], channel: _Channel) -> None:
    # A pooled connection left listening would pile up every run's notifications; one that
    # cannot be told to stop is discarded instead. An invalidated one is closed already.
    if connection.invalidated:
        return
    try:
        if channel.listening:
            connection.execute(query("unlisten_run_events"))
            channel.listening = False
        for _ in driver.notifies(timeout=0):
            pass
    except (sa.exc.SQLAlchemyError, psycopg.Error):
        connection.invalidate()


@asynccontextmanager
async def _async_waiting_connection(
    engine: AsyncEngine, listen: bool
) -> AsyncIterator[tuple[AsyncConnection, psycopg.AsyncConnection[Any] | None, _Channel]]:
    pooled = await connect_async(engine)
    try:
        connection = await pooled.execution_options(isolation_level="AUTOCOMMIT")
        raw = await connection.get_raw_connection()
        driver = cast("psycopg.AsyncConnection[Any]", raw.driver_connection)
        if not listen or through_pooler(driver):
            yield connection, None, _Channel(wanted=False)
            return
        channel = _Channel(wanted=True)
        try:
            yield connection, driver, channel
        finally:
            # Shielded: a cancelled waiter must still not leave a pooled connection listening.
            with anyio.CancelScope(shield=True):
                await _unlisten_async(connection, driver, channel)
    finally:
        with anyio.CancelScope(shield=True):
            await pooled.close()


async def _unlisten_async(
    connection: AsyncConnection, driver: psycopg.AsyncConnection[Any], channel: _Channel
) -> None:
    if connection.invalidated:
        return
    try:
        if channel.listening:
            await connection.execute(query("unlisten_run_events"))
            channel.listening = False
        async for _ in driver.notifies(timeout=0):
            pass
    except (sa.exc.SQLAlchemyError, psycopg.Error):
        await connection.invalidate()
