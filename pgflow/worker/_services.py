"""Background services of a serving worker, and the interface to plug in more.

A service is any object with ``async def run(self, session: ServingSession) -> None``. The
worker starts each one in its task group once it is registered and about to claim, and cancels
them after in-flight handlers have drained (or when serving fails). A service runs for the whole
session: it loops, waits and handles its own database faults. An exception escaping ``run``
ends serving as a crash (``worker.crashed``, non-zero exit), so supervision restarts the process.

Threads started by a service must end when ``run`` is cancelled: set a ``threading.Event``
in a ``finally`` block, as :class:`Heartbeats` and :class:`WakeupListener` do.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import anyio.from_thread
import anyio.to_thread

from pgflow import telemetry
from pgflow.worker._session import ServingSession


class WorkerService(Protocol):
    async def run(self, session: ServingSession) -> None: ...


def _call_on_loop(function: Callable[..., Any], *args: Any) -> None:
    """From a service thread: run ``function`` on the event loop, unless serving has ended."""
    with contextlib.suppress(anyio.RunFinishedError):
        anyio.from_thread.run_sync(function, *args)


async def run_in_thread(body: Callable[[threading.Event], None]) -> None:
    """Run ``body(stop)`` in a thread of its own until it returns; on cancellation set ``stop``
    and return at once (the thread ends by itself soon after)."""
    stop = threading.Event()
    try:
        await anyio.to_thread.run_sync(body, stop, abandon_on_cancel=True)
    finally:
        stop.set()


class Heartbeats:
    """Marks the worker's rows alive every ``heartbeat_interval`` from a thread with its own
    connection, so a busy or blocked event loop does not make a live worker look dead.

    ``healthy_since`` is when the current unbroken run of successful heartbeats began (None
    while they fail): until this worker has been heard for longer than ``heartbeat_timeout``,
    it cannot tell a dead worker from one that was cut off like itself.
    """

    def __init__(self) -> None:
        self.healthy_since: float | None = None

    async def run(self, session: ServingSession) -> None:
        await run_in_thread(lambda stop: self._beat(session, stop))

    def _beat(self, session: ServingSession, stop: threading.Event) -> None:
        worker_ids = session.worker_ids
        while not stop.wait(session.options.heartbeat_interval):
            try:
                replies = session.store.heartbeat(worker_ids)
            except Exception as exc:
                self.healthy_since = None
                telemetry.emit("worker.heartbeat_failed", level=logging.WARNING, error=str(exc))
                continue
            if self.healthy_since is None:
                self.healthy_since = time.monotonic()
            if len(replies) < len(worker_ids):
                # Rows deleted by someone (pruning, an operator): register again.
                registrations = [flow.registration for flow in session.flows]
                try:
                    anyio.from_thread.run(session.store.register, registrations)
                except anyio.RunFinishedError:
                    return
                except Exception as exc:
                    telemetry.emit("worker.heartbeat_failed", level=logging.WARNING, error=str(exc))
            if any(reply.deprecated for reply in replies):
                telemetry.emit("worker.deprecated")
                _call_on_loop(session.stop)


class RecoverySweep:
    """Offers every ``recovery_interval`` to run the stalled-task sweep (one worker at a time
    does the work, see extension/0004_stalled_task_recovery.sql)."""

    async def run(self, session: ServingSession) -> None:
        options = session.options
        while True:
            await anyio.sleep(options.recovery_interval)
            try:
                recovered = await session.store.recover(
                    heartbeat_timeout=options.heartbeat_timeout, max_requeues=options.max_requeues
                )
            except Exception as exc:  # the next round tries again; nothing is lost meanwhile
                telemetry.emit("tasks.recovery_failed", level=logging.WARNING, error=str(exc))
                continue
            if recovered:
                telemetry.emit(
                    "tasks.recovered",
                    level=logging.WARNING,
                    tasks=[
                        {
                            "run_id": str(task.run_id),
                            "step_slug": task.step_slug,
                            "task_index": str(task.task_index),
                            "action": task.action,
                        }
                        for task in recovered
                    ],
                )


class WakeupListener:
    """Wakes the flows' pollers on NOTIFY from the queue triggers; polling covers any gap."""

    async def run(self, session: ServingSession) -> None:
        def wake(queue_name: str) -> None:
            _call_on_loop(session.wake, queue_name)

        await run_in_thread(lambda stop: session.store.wait_for_wakeups(stop, wake))
