"""Firing schedules: one pass (:func:`fire_due`) and the loop each worker runs (:class:`Scheduler`).

Exactly once, however many workers run: a pass locks the due schedules it fires (``FOR UPDATE
SKIP LOCKED``, so schedulers never wait for each other and never share a schedule), records each
tick in ``schedule_fires`` (whose primary key refuses a tick fired before) and starts its run in
the same transaction, then moves the schedule's next tick past now. A scheduler that dies
mid-pass (even ``kill -9``) rolls all of that back: the tick stays due for the others.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pgflow import telemetry
from pgflow._sql import query
from pgflow.client import start_flow
from pgflow.cron import Cron
from pgflow.errors import PgflowError

if TYPE_CHECKING:
    from pgflow.worker._session import ServingSession

# A schedule whose row cannot be evaluated here (e.g. a time zone this machine lacks) is
# looked at again after this long, not on every pass.
_RETRY_BROKEN = timedelta(seconds=60)


def cron_from_row(row: Mapping[Any, Any]) -> Cron:
    return Cron(
        row["cron"],
        name=row["schedule_name"],
        input=row["input"],
        timezone=row["timezone"],
        missed=row["missed"],
        catch_up_limit=row["catch_up_limit"],
        grace=row["grace_seconds"],
        time_key=row["time_key"],
        flow_slug=row["flow_slug"],
    )


def default_fired_by() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def fire(
    connection: Connection,
    cron: Cron,
    tick: datetime,
    *,
    manual: bool = False,
    fired_by: str | None = None,
) -> uuid.UUID | None:
    """Record ``tick``'s fire and start its run; None when the tick was fired already."""
    run_id = uuid.uuid4()
    recorded = connection.execute(
        query("schedules_record_fire"),
        {
            "name": cron.name,
            "fire_time": tick,
            "run_id": run_id,
            "manual": manual,
            "fired_by": fired_by,
        },
    ).first()
    if recorded is None:
        return None
    start_flow(connection, str(cron.flow_slug), cron.run_input(tick), run_id=run_id)
    return run_id


@dataclass
class FirePass:
    """What one pass did: the runs it started, and errors per schedule."""

    claimed: int = 0
    fired: list[tuple[str, str, datetime, uuid.UUID]] = field(default_factory=list)
    """``(schedule, flow, tick, run_id)`` per run started."""
    errors: dict[str, str] = field(default_factory=dict)


def fire_due(
    connection: Connection,
    *,
    fired_by: str | None = None,
    limit: int = 20,
    now: datetime | None = None,
) -> FirePass:
    """Fire the due schedules that no other scheduler holds, in the caller's transaction (the
    fires count once it commits). A schedule whose run cannot start records ``last_error``
    and moves on; nothing here raises for one bad schedule. ``now`` (default: the database's
    clock) is for tests and replays."""
    result = FirePass()
    rows = (
        connection.execute(query("schedules_claim_due"), {"limit": limit, "now": now})
        .mappings()
        .all()
    )
    result.claimed = len(rows)
    for row in rows:
        moment: datetime = row["now"]
        name = str(row["schedule_name"])
        try:
            cron = cron_from_row(row)
            ticks = cron.due(row["next_fire_at"] or cron.next_after(row["updated_at"]), moment)
            next_fire_at = cron.next_after(moment)
        except PgflowError as exc:  # e.g. a time zone this machine lacks: look again later
            _advance(connection, name, moment + _RETRY_BROKEN, error=str(exc))
            result.errors[name] = str(exc)
            continue
        last: tuple[datetime, uuid.UUID] | None = None
        for tick in ticks:
            try:
                with connection.begin_nested():
                    run_id = fire(connection, cron, tick, fired_by=fired_by)
            except (PgflowError, sa.exc.DBAPIError) as exc:
                error = f"{type(exc).__name__}: {getattr(exc, 'orig', None) or exc}".strip()
                result.errors[name] = error
                telemetry.emit(
                    "schedule.fire_failed",
                    level=logging.WARNING,
                    schedule=name,
                    flow=cron.flow_slug,
                    fire_time=tick.isoformat(),
                    error=error,
                )
                continue
            if run_id is not None:
                last = (tick, run_id)
                result.fired.append((name, str(cron.flow_slug), tick, run_id))
        _advance(connection, name, next_fire_at, last=last, error=result.errors.get(name))
    return result


def _advance(
    connection: Connection,
    name: str,
    next_fire_at: datetime,
    *,
    last: tuple[datetime, uuid.UUID] | None = None,
    error: str | None = None,
) -> None:
    connection.execute(
        query("schedules_advance"),
        {
            "name": name,
            "next_fire_at": next_fire_at,
            "last_fire_at": last[0] if last else None,
            "last_run_id": last[1] if last else None,
            "last_error": error,
        },
    )


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
        self.fired_by = fired_by or default_fired_by()
        self.max_idle = max_idle
        self.batch_size = batch_size
        self.keep_fires = keep_fires
        self.prune_interval = prune_interval

    def run_once(self) -> float:
        """One pass (blocking); returns how long to sleep before the next."""
        with self.engine.begin() as connection:
            done = fire_due(connection, fired_by=self.fired_by, limit=self.batch_size)
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
        with self.engine.connect() as connection:
            seconds = connection.execute(query("schedules_seconds_until_due")).scalar_one()
        if seconds is None:
            return self.max_idle
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
