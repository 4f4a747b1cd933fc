"""One connection per worker activity (claiming, reporting, service calls, heartbeats).

On asyncio the claim, report and service statements run on the event loop itself through
psycopg's async connection; elsewhere (trio, or asyncio's proactor loop on Windows, which psycopg
cannot drive) a blocking connection runs them in a thread. A statement in a thread costs two
thread wake-ups (the thread's and the event loop's on its return), which is what a start-and-wait
spent between its NOTIFY and the task's completion: every wake-up waits for a core on a busy host.

Either way a statement, once sent, is awaited to its end even when the caller is cancelled (a
thread cannot be stopped midway; the async path is shielded to match), so the connection never
holds half a conversation. A lost connection is reopened on next use; ``ConnectionLost`` tells
the caller that the statement may or may not have committed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from psycopg.rows import dict_row

from pgflow import _sql
from pgflow.errors import ConnectionLost

Row = dict[str, Any]
CONNECT_TIMEOUT = 5
PREPARE_AFTER_USES = 5  # psycopg's default; statements run with prepare=True skip the wait


def on_asyncio_selector_loop() -> bool:
    """Whether psycopg's async connection can run here: an asyncio loop that is not Windows'
    proactor loop (trio has no asyncio loop running)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return False
    proactor = getattr(asyncio, "ProactorEventLoop", None)
    return proactor is None or not isinstance(loop, proactor)


CONTENTION_SQLSTATES = frozenset({"40P01", "40001", "55P03"})
"""Deadlock detected, serialization failure, lock not available (a lock timeout)."""


def contention(exc: BaseException) -> str | None:
    """The SQLSTATE when ``exc`` (psycopg's, or SQLAlchemy's wrapping one) means the statement
    lost a race for a lock and was rolled back whole, so running it again is safe; else None."""
    error: BaseException | None = exc
    for _ in range(4):  # SQLAlchemy's DBAPIError.orig, or a ``raise ... from``
        if error is None:
            return None
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate in CONTENTION_SQLSTATES:
            return sqlstate
        error = getattr(error, "orig", None) or error.__cause__
    return None


def _lost(
    connection: psycopg.Connection[Row] | psycopg.AsyncConnection[Row], exc: Exception
) -> bool:
    """Whether an error means the connection is gone (not the statement's own failure, such as
    a statement timeout or a serialization failure)."""
    if not isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return False
    return connection.broken or connection.closed or isinstance(exc, psycopg.InterfaceError)


class Connection:
    """One lazily (re)opened autocommit connection, used from a single activity at a time."""

    def __init__(self, conninfo: str, *, application_name: str, prepare: bool = True) -> None:
        self._conninfo = conninfo
        self._application_name = application_name
        self._prepare = prepare
        self._connection: psycopg.Connection[Row] | None = None
        self._async: psycopg.AsyncConnection[Row] | None = None
        self._lock = anyio.CapacityLimiter(1)

    def _options(self) -> dict[str, Any]:
        return {
            "autocommit": True,
            "row_factory": dict_row,
            "application_name": self._application_name,
            "connect_timeout": CONNECT_TIMEOUT,
            "prepare_threshold": PREPARE_AFTER_USES if self._prepare else None,
        }

    def connect(self) -> psycopg.Connection[Row]:
        if self._connection is None or self._connection.closed:
            try:
                self._connection = psycopg.connect(self._conninfo, **self._options())
            except psycopg.OperationalError as exc:
                raise ConnectionLost(str(exc)) from exc
        return self._connection

    def discard(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def fetch_blocking(self, name: str, params: Mapping[str, Any]) -> list[Row]:
        with self._reporting_lost_connections() as connection:
            cursor = connection.execute(_sql.psycopg_text(name), params, prepare=self._prepare)
            return cursor.fetchall() if cursor.description else []

    def fetch_all_blocking(self, statements: Sequence[tuple[str, Mapping[str, Any]]]) -> list[Row]:
        """Run the statements in one transaction; the rows of the last one."""
        rows: list[Row] = []
        with self._reporting_lost_connections() as connection, connection.transaction():
            for name, params in statements:
                cursor = connection.execute(_sql.psycopg_text(name), params, prepare=self._prepare)
                rows = cursor.fetchall() if cursor.description else []
        return rows

    @contextmanager
    def _reporting_lost_connections(self) -> Iterator[psycopg.Connection[Row]]:
        connection = self.connect()
        try:
            yield connection
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if _lost(connection, exc):
                self.discard()
                raise ConnectionLost(str(exc)) from exc
            raise

    async def fetch_all(self, *statements: tuple[str, Mapping[str, Any]]) -> list[Row]:
        """Run the statements in one transaction; the rows of the last one."""
        if on_asyncio_selector_loop():
            return await self._run_async(statements, transaction=True)
        return await anyio.to_thread.run_sync(
            self.fetch_all_blocking, statements, limiter=self._lock
        )

    async def fetch(self, name: str, **params: Any) -> list[Row]:
        if on_asyncio_selector_loop():
            return await self._run_async(((name, params),), transaction=False)
        return await anyio.to_thread.run_sync(self.fetch_blocking, name, params, limiter=self._lock)

    async def _run_async(
        self, statements: Sequence[tuple[str, Mapping[str, Any]]], *, transaction: bool
    ) -> list[Row]:
        # Shielded, as a statement in a thread runs to its end whatever happens to its caller.
        rows: list[Row] = []
        with anyio.CancelScope(shield=True):
            async with self._lock:
                connection = await self._connect_async()
                try:
                    if not transaction:
                        [(name, params)] = statements
                        rows = await self._execute(connection, name, params)
                    else:
                        async with connection.transaction():
                            for name, params in statements:
                                rows = await self._execute(connection, name, params)
                except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                    if _lost(connection, exc):
                        await self._discard_async()
                        raise ConnectionLost(str(exc)) from exc
                    raise
        return rows

    async def _execute(
        self, connection: psycopg.AsyncConnection[Row], name: str, params: Mapping[str, Any]
    ) -> list[Row]:
        cursor = await connection.execute(_sql.psycopg_text(name), params, prepare=self._prepare)
        return await cursor.fetchall() if cursor.description else []

    async def _connect_async(self) -> psycopg.AsyncConnection[Row]:
        if self._async is None or self._async.closed:
            try:
                self._async = await psycopg.AsyncConnection.connect(
                    self._conninfo, **self._options()
                )
            except psycopg.OperationalError as exc:
                raise ConnectionLost(str(exc)) from exc
        return self._async

    async def _discard_async(self) -> None:
        connection, self._async = self._async, None
        if connection is not None:
            await connection.close()

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            async with self._lock:
                await self._discard_async()
        await anyio.to_thread.run_sync(self.discard, limiter=self._lock)
