"""Background services of a serving worker, and the interface to plug in more.

A service is any object with ``async def run(self, context: ServiceContext) -> None``. The
worker starts each one in its task group once it is registered and about to claim, and cancels
them after in-flight handlers have drained (or when serving fails). A service runs for the whole
session: it loops, waits and handles its own database faults. An exception escaping ``run``
ends serving as a crash (``worker.crashed``, non-zero exit), so supervision restarts the process.

Threads started by a service must end when ``run`` is cancelled: set a ``threading.Event``
in a ``finally`` block, as :class:`Heartbeats` and :class:`WakeupListener` do.

The built-in services see the whole serving session (:class:`SessionService`) and reach the
database only through its store; a service of yours sees :class:`ServiceContext`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

import anyio
import anyio.from_thread
import anyio.to_thread
from sqlalchemy.engine import Engine

from pgflow import telemetry
from pgflow.worker._options import WorkerOptions
from pgflow.worker._repeats import RepeatedFailure
from pgflow.worker._session import ServingSession
from pgflow.worker._store import TaskKey


class ServiceContext(Protocol):
    """What a background service of yours sees of the serving worker."""

    @property
    def options(self) -> WorkerOptions:
        """The worker's options."""

    @property
    def flow_slugs(self) -> tuple[str, ...]:
        """The flows (and jobs) this worker serves."""

    @property
    def worker_ids(self) -> list[uuid.UUID]:
        """The worker's rows in ``pgflow.workers``, one per flow served."""

    @property
    def engine(self) -> Engine:
        """The worker's engine, for the service's own statements."""

    @property
    def stopping(self) -> anyio.Event:
        """Set once the worker stops claiming; the service is cancelled after the drain."""

    def stop(self) -> None:
        """Stop the worker as ``Worker.stop()`` does (event loop only)."""

    def wake(self, flow_slug: str) -> None:
        """Claim the flow's tasks now instead of at the next poll."""


class WorkerService(Protocol):
    """A background service: ``Worker(..., services=[...])`` or ``worker.add_service(...)``."""

    async def run(self, context: ServiceContext) -> None: ...


class SessionService(Protocol):
    """A built-in service: it sees the whole session (a :class:`WorkerService` is one too)."""

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

    Keeps ``session.heartbeats_healthy_since``: when the current unbroken run of successful
    heartbeats began (None while they fail).
    """

    async def run(self, session: ServingSession) -> None:
        await run_in_thread(lambda stop: self._beat(session, stop))

    def _beat(self, session: ServingSession, stop: threading.Event) -> None:
        worker_ids = session.worker_ids
        failures = RepeatedFailure("worker.heartbeat_failed")
        while not stop.wait(session.options.heartbeat_interval):
            try:
                replies = session.store.heartbeat(worker_ids)
            except Exception as exc:
                session.heartbeats_healthy_since = None
                failures.failed(error=str(exc))
                continue
            failures.succeeded()
            if session.heartbeats_healthy_since is None:
                session.heartbeats_healthy_since = time.monotonic()
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
    does the work, see extension/0004_stalled_task_recovery.sql).

    Only a worker whose own heartbeats have gone through for longer than ``heartbeat_timeout``
    sweeps: after an outage nobody could heartbeat, and a worker that was just cut off like the
    others cannot tell the dead from the living, so the first sweep would take running tasks
    from healthy workers (and fail those on their last attempt). Waiting that long gives every
    living worker time to be heard again.
    """

    async def run(self, session: ServingSession) -> None:
        options = session.options
        failures = RepeatedFailure("tasks.recovery_failed")
        while True:
            await anyio.sleep(options.recovery_interval)
            since = session.heartbeats_healthy_since
            if since is None or time.monotonic() - since <= options.heartbeat_timeout:
                continue
            try:
                recovered = await session.store.recover(
                    heartbeat_timeout=options.heartbeat_timeout,
                    max_requeues=options.max_requeues,
                    sweeper_ids=session.worker_ids,
                )
            except Exception as exc:  # the next round tries again; nothing is lost meanwhile
                failures.failed(error=str(exc))
                continue
            failures.succeeded()
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
        # A store that can listen on the event loop (PostgresStore on asyncio) wakes the pollers
        # from there: one thread wake-up fewer between a NOTIFY and the claim it causes.
        on_loop = getattr(session.store, "wakeups_on_loop", None)
        if on_loop is not None and await on_loop(session.wake):
            return

        def wake(queue_name: str) -> None:
            _call_on_loop(session.wake, queue_name)

        await run_in_thread(lambda stop: session.store.wait_for_wakeups(stop, wake))


class LoopWatchdog:
    """Logs ``worker.loop_blocked`` when the event loop has not run for longer than
    ``blocked_loop_warning``: a handler is blocking it (``time.sleep``, a sync driver, CPU work in
    an ``async def``), so no other handler, claim or report makes progress meanwhile and the
    step's timeout cannot be enforced. Heartbeats have their own thread and go on."""

    async def run(self, session: ServingSession) -> None:
        threshold = session.options.blocked_loop_warning
        last_tick = [time.monotonic()]

        def watch(stop: threading.Event) -> None:
            blocked_since: float | None = None  # the last tick before the block we warned of
            running: list[str] = []

            def report_unblocked() -> None:
                nonlocal blocked_since
                tick = last_tick[0]
                if blocked_since is not None and tick != blocked_since:
                    # The loop runs again: say how long it really was blocked, and by what.
                    telemetry.emit(
                        "worker.loop_unblocked",
                        level=logging.WARNING,
                        blocked_for=round(tick - blocked_since, 1),
                        running=running,
                    )
                    blocked_since = None

            while not stop.wait(threshold / 4):
                report_unblocked()
                tick = last_tick[0]
                blocked_for = time.monotonic() - tick
                if blocked_for > threshold and blocked_since is None:
                    blocked_since = tick
                    running = _running_steps(session)
                    telemetry.emit(
                        "worker.loop_blocked",
                        level=logging.WARNING,
                        blocked_for=round(blocked_for, 1),
                        threshold=threshold,
                        running=running,
                    )
            report_unblocked()  # a worker stopping right after a block still says how long

        async with anyio.create_task_group() as group:
            group.start_soon(run_in_thread, watch)
            while True:
                last_tick[0] = time.monotonic()
                await anyio.sleep(threshold / 4)


def _running_steps(session: ServingSession) -> list[str]:
    """What runs while the loop is blocked (read from another thread: best effort)."""
    try:
        keys = list(session.running)
    except RuntimeError:  # changed while copying
        return []
    return [f"{key.step_slug}[{key.task_index}] of run {key.run_id}" for key in keys[:10]]


CANCELLATION_GRACE = 5.0
"""Seconds an async handler has to end after its timeout cancelled it."""


class OverdueHandlers:
    """Finds async handlers that swallow the cancellation of their timeout (``except
    CancelledError`` / ``BaseException`` without re-raising, in a loop). Python cannot end a
    coroutine from outside; such a handler holds its slot and may spin forever, and would keep
    even a stop from finishing. So it is reported (``task.cancellation_ignored``) and the worker
    crashes; under ``Worker.run()`` the process then exits (see ``Worker.run``)."""

    async def run(self, session: ServingSession) -> None:
        reported: set[TaskKey] = set()
        while True:
            asleep_since = anyio.current_time()
            await anyio.sleep(1.0)
            now = anyio.current_time()
            if now - asleep_since > 2.0:
                # The loop was blocked (by a handler's blocking call): the handlers whose
                # timeout passed meanwhile have not had their turn to see the cancellation yet.
                continue
            overdue = [
                key
                for key, deadline in session.async_deadlines.items()
                if now > deadline + CANCELLATION_GRACE and key not in reported
            ]
            reported.intersection_update(session.async_deadlines)
            reported.update(overdue)
            for key in overdue:
                telemetry.emit(
                    "task.cancellation_ignored",
                    level=logging.ERROR,
                    step=key.step_slug,
                    run_id=str(key.run_id),
                    task_index=key.task_index,
                )
            if overdue:
                session.crash(
                    f"async handler(s) of step(s) {sorted({k.step_slug for k in overdue})} "
                    f"went on more than {CANCELLATION_GRACE:g}s after their timeout cancelled "
                    "them (they catch the cancellation and do not re-raise it)"
                )


class CancelWatcher:
    """Cancels the running tasks of runs that were cancelled, every ``cancel_check_interval``
    (see :mod:`pgflow.worker._cancellation`)."""

    async def run(self, session: ServingSession) -> None:
        failures = RepeatedFailure("runs.cancel_check_failed")
        while True:
            await anyio.sleep(session.options.cancel_check_interval)
            runs = session.cancellations.runs()
            if not runs:
                continue
            try:
                cancelled = await session.store.cancelled_runs(runs)
            except Exception as exc:  # the next round asks again
                failures.failed(error=str(exc))
                continue
            failures.succeeded()
            for run_id in cancelled:
                if tasks := session.cancellations.cancel_run(run_id):
                    telemetry.emit("run.cancelled_in_flight", run_id=str(run_id), tasks=tasks)
