"""Firing schedules: one pass (:func:`fire_due`); every worker runs passes in a loop (its scheduler
service, :mod:`pgflow.worker._scheduler`).

Exactly once, however many workers run: a pass locks the due schedules it fires (``FOR UPDATE
SKIP LOCKED``, so schedulers never wait for each other and never share a schedule), records each
tick in ``schedule_fires`` (whose primary key refuses a tick fired before) and starts its run in
the same transaction, then moves the schedule's next tick past now. A scheduler that dies
mid-pass (even ``kill -9``) rolls all of that back: the tick stays due for the others.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pgflow import telemetry
from pgflow._sql import query
from pgflow.client import start_flow
from pgflow.cron import Cron
from pgflow.errors import PgflowError

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
