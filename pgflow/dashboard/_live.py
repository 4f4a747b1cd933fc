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
from sqlalchemy.engine import URL

from pgflow._sql import psycopg_text

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
    def __init__(self, url: URL) -> None:
        self._conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
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

    async def _listen(self, ready: asyncio.Event) -> None:
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=5
                )
            except psycopg.Error:
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
