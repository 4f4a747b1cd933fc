"""Live updates: one LISTEN connection on the realtime shim's channel, fanned out to browsers.

Upstream calls ``realtime.send`` on every run and step transition; on plain PostgreSQL our shim
turns that into ``NOTIFY pgflow`` with ``{"run_id", "event", "status", ...}``. The connection is
opened when the first browser subscribes and closed when the last one leaves, so a mounted
dashboard needs no lifespan hooks from its host application.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import psycopg
from sqlalchemy.engine import Engine

from pgflow import _db
from pgflow._sql import psycopg_text
from pgflow.errors import DatabaseUnavailableError

RECONNECT_DELAY = 1.0


@dataclass(eq=False)
class Subscription:
    run_id: str | None  # None: every event
    queue: asyncio.Queue[dict[str, object]] = field(
        default_factory=lambda: asyncio.Queue(maxsize=64)
    )

    def offer(self, event: dict[str, object]) -> None:
        # A browser only needs to learn that something changed, so a full queue loses nothing
        # that matters: it already holds a reason to refresh.
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(event)


class Broadcaster:
    """LISTENs on ``listen_url`` when given, else on the engine's server, unless the engine is
    behind a transaction pooler (LISTEN there receives nothing): then there are no live events
    and pages show changes when reloaded."""

    def __init__(self, engine: Engine, listen_url: str | None = None) -> None:
        self._engine = engine
        self._conninfo = None if listen_url is None else _db.conninfo(listen_url)
        self._through_pooler: bool | None = None
        self._subscriptions: set[Subscription] = set()
        self._listener: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    @contextlib.asynccontextmanager
    async def subscribe(self, run_id: str | None) -> AsyncIterator[Subscription]:
        """Events for ``run_id`` (all events when None), from the moment this returns."""
        subscription = Subscription(run_id)
        self._subscriptions.add(subscription)
        try:
            if self._listener is None or self._listener.done():
                self._ready = asyncio.Event()
                self._listener = asyncio.create_task(self._listen(self._ready))
            await self._ready.wait()
            yield subscription
        finally:
            self._subscriptions.discard(subscription)
            if not self._subscriptions:
                # The stream ends by cancellation (the browser left); shielded, so the
                # LISTEN connection is closed here and now rather than left to the GC.
                with anyio.CancelScope(shield=True):
                    await self.close()

    @property
    def listening(self) -> bool:
        return self._listener is not None

    async def close(self) -> None:
        """Stop listening (the server's shutdown; or the last subscriber left)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            # wait() neither raises the listener's CancelledError nor mistakes it for ours.
            await asyncio.wait([listener])

    async def _target(self) -> str | None:
        if self._conninfo is not None:
            return self._conninfo
        if self._through_pooler is None:
            self._through_pooler = await anyio.to_thread.run_sync(
                _db.engine_through_pooler, self._engine
            )
        return None if self._through_pooler else _db.conninfo(self._engine.url)

    async def _listen(self, ready: asyncio.Event) -> None:
        while True:
            try:
                conninfo = await self._target()
                if conninfo is None:
                    ready.set()
                    return
                connection = await psycopg.AsyncConnection.connect(
                    conninfo, autocommit=True, connect_timeout=5
                )
            except (psycopg.Error, DatabaseUnavailableError):
                # Subscribers wait on a heartbeat, not on us; they see no events until the
                # database is back, and their pages still load through the normal queries.
                ready.set()
                await asyncio.sleep(RECONNECT_DELAY)
                continue
            try:
                async with connection:
                    await connection.execute(psycopg_text("listen_for_run_events"))
                    ready.set()
                    # After a reconnect, events may have been missed: tell everyone to refresh.
                    self._dispatch({"event": "resync"})
                    async for notify in connection.notifies():
                        self._dispatch(_parse(notify.payload))
            except psycopg.Error:
                await asyncio.sleep(RECONNECT_DELAY)

    def _dispatch(self, event: dict[str, object]) -> None:
        run_id = event.get("run_id")
        for subscription in list(self._subscriptions):
            if subscription.run_id is None or run_id is None or subscription.run_id == run_id:
                subscription.offer(event)


def _parse(payload: str) -> dict[str, object]:
    try:
        event = json.loads(payload)
    except ValueError:
        return {"event": "unknown"}
    return event if isinstance(event, dict) else {"event": "unknown"}
