"""The scheduler: a worker service that fires due schedules, exactly once however many workers
run (each pass locks the schedules it fires; see :mod:`pgflow.schedules._firing`).

Between passes it sleeps until the earliest schedule is due, at most ``max_idle`` seconds (so a
schedule created elsewhere is noticed within that long). ``WorkerOptions.scheduler`` (on by
default; ``pgflow run-worker --no-scheduler``) decides whether a worker runs it.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import anyio

from pgflow import telemetry
from pgflow.worker._repeats import RepeatedFailure
from pgflow.worker._session import ServingSession

NOTHING_CLAIMED_PAUSE = 0.1
"""Seconds to wait after a pass that found a schedule due but fired nothing."""


class SchedulerService:
    """Fires due schedules through the worker's store until cancelled; handles its own database
    faults (``scheduler.pass_failed``, then the next pass), so it never ends serving."""

    def __init__(
        self,
        *,
        fired_by: str | None = None,
        max_idle: float = 1.0,
        batch_size: int = 20,
        keep_fires: timedelta = timedelta(days=7),
        prune_interval: float = 3600.0,
    ) -> None:
        if max_idle <= 0 or batch_size < 1:
            raise ValueError("max_idle must be positive and batch_size at least 1")
        self.fired_by = fired_by or f"{socket.gethostname()}:{os.getpid()}"
        self.max_idle = max_idle
        self.batch_size = batch_size
        self.keep_fires = keep_fires
        self.prune_interval = prune_interval

    async def run(self, session: ServingSession) -> None:
        telemetry.emit("scheduler.started", fired_by=self.fired_by)
        next_prune = anyio.current_time() + self.prune_interval
        failures = RepeatedFailure("scheduler.pass_failed")
        while True:
            try:
                wait = await self._pass(session)
                if anyio.current_time() >= next_prune:
                    next_prune = anyio.current_time() + self.prune_interval
                    await session.store.prune_schedule_fires(self.keep_fires)
            except Exception as exc:
                failures.failed(error=f"{type(exc).__name__}: {exc}".strip())
                wait = self.max_idle
            else:
                failures.succeeded()
            await anyio.sleep(wait)

    async def _pass(self, session: ServingSession) -> float:
        """One pass; how long to sleep before the next."""
        done = await session.store.fire_schedules(fired_by=self.fired_by, limit=self.batch_size)
        for fired in done.fired:  # committed: now they happened
            telemetry.emit(
                "schedule.fired",
                schedule=fired.schedule_name,
                flow=fired.flow_slug,
                fire_time=fired.fire_time.isoformat(),
                run_id=str(fired.run_id),
            )
        if done.more_due:
            return 0.0
        if done.seconds_until_due is None:  # no active schedule
            return self.max_idle
        if done.seconds_until_due == 0 and not done.claimed:
            # Due, yet this pass fired nothing: another worker holds it, or it cannot be fired
            # now. Looking again at once would only spin.
            return min(NOTHING_CLAIMED_PAUSE, self.max_idle)
        # A few milliseconds late, so that the tick is due when the next pass looks.
        return min(done.seconds_until_due + 0.005, self.max_idle)
