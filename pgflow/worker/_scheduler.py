"""The scheduler: a worker service that fires due schedules (``pgflow.schedules.fire_due``) in a
loop, exactly once however many workers run (see :mod:`pgflow.schedules._firing`)."""

from __future__ import annotations

import logging
import os
import socket
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
from sqlalchemy.engine import Engine

from pgflow import telemetry
from pgflow._sql import query
from pgflow.schedules import fire_due
from pgflow.worker._session import ServingSession

NOTHING_CLAIMED_PAUSE = 0.1
"""Seconds to wait after a pass that found a schedule due but fired nothing."""


class Scheduler:
    """Fires due schedules until cancelled; every worker runs one (``--no-scheduler`` turns
    it off). Standalone: ``anyio.run(Scheduler(engine).run)``.

    Between passes it sleeps until the earliest schedule is due, at most ``max_idle`` seconds
    (so a schedule created elsewhere is noticed within that long).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        fired_by: str | None = None,
        max_idle: float = 1.0,
        batch_size: int = 20,
        keep_fires: timedelta = timedelta(days=7),
        prune_interval: float = 3600.0,
    ) -> None:
        if max_idle <= 0 or batch_size < 1:
            raise ValueError("max_idle must be positive and batch_size at least 1")
        self.engine = engine
        self.fired_by = fired_by or f"{socket.gethostname()}:{os.getpid()}"
        self.max_idle = max_idle
        self.batch_size = batch_size
        self.keep_fires = keep_fires
        self.prune_interval = prune_interval

    def run_once(self) -> float:
        """One pass (blocking, one transaction); returns how long to sleep before the next."""
        with self.engine.begin() as connection:
            done = fire_due(connection, fired_by=self.fired_by, limit=self.batch_size)
            seconds = (
                None
                if done.claimed == self.batch_size
                else connection.execute(query("schedules_seconds_until_due")).scalar_one()
            )
        for schedule, flow, tick, run_id in done.fired:  # committed: now they happened
            telemetry.emit(
                "schedule.fired",
                schedule=schedule,
                flow=flow,
                fire_time=tick.isoformat(),
                run_id=str(run_id),
            )
        if done.claimed == self.batch_size:
            return 0.0  # more may be due
        if seconds is None:  # no active schedule
            return self.max_idle
        if seconds == 0 and not done.claimed:
            # Due, yet this pass fired nothing: another worker holds it, or it cannot be fired
            # now. Looking again at once would only spin.
            return min(NOTHING_CLAIMED_PAUSE, self.max_idle)
        # A few milliseconds late, so that the tick is due when the next pass looks.
        return min(float(seconds) + 0.005, self.max_idle)

    def prune(self) -> int:
        """Forget fire records older than ``keep_fires`` (each schedule's latest stays)."""
        with self.engine.begin() as connection:
            pruned: int = connection.execute(
                query("schedules_prune_fires"),
                {"keep_seconds": self.keep_fires.total_seconds()},
            ).scalar_one()
        return pruned

    async def run(self) -> None:
        telemetry.emit("scheduler.started", fired_by=self.fired_by)
        next_prune = anyio.current_time() + self.prune_interval
        while True:
            try:
                wait = await anyio.to_thread.run_sync(self.run_once)
                if anyio.current_time() >= next_prune:
                    next_prune = anyio.current_time() + self.prune_interval
                    await anyio.to_thread.run_sync(self.prune)
            except Exception as exc:
                telemetry.emit(
                    "scheduler.pass_failed",
                    level=logging.WARNING,
                    error=f"{type(exc).__name__}: {exc}".strip(),
                )
                wait = self.max_idle
            await anyio.sleep(wait)


class SchedulerService:
    """The scheduler as a background service of a serving worker (``WorkerOptions.scheduler``,
    on by default; ``pgflow run-worker --no-scheduler`` turns it off). It uses the worker's
    engine and handles its own database faults, so it never ends serving."""

    def __init__(self, **scheduler_options: Any) -> None:
        self.scheduler_options = scheduler_options

    async def run(self, session: ServingSession) -> None:
        await Scheduler(session.engine, **self.scheduler_options).run()
