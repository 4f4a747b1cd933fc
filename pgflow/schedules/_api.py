"""Schedules at run time: create, update, pause, resume, delete, list, trigger; sync and async.

Every call takes a ``Session``, ``Connection`` or ``Engine`` (the ``*_async`` twins the async
ones), with the client's transaction rules: with a Session or Connection the change is part of
the caller's transaction.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from types import EllipsisType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pgflow._binds import (
    AsyncBind,
    FlowRef,
    SyncBind,
    connection_for,
    json_kind,
    resolve_flow,
    run_async,
)
from pgflow._registered import not_registered
from pgflow._sql import query
from pgflow.cron import Cron, Missed, schedules_of, validate_name
from pgflow.errors import (
    InvalidScheduleError,
    MapInputNotArrayError,
    ScheduleError,
    ScheduleNotFoundError,
)
from pgflow.schedules._firing import cron_from_row, fire


@dataclass(frozen=True, slots=True)
class Schedule:
    """A stored schedule: its definition (``cron``) and its state."""

    cron: Cron
    declared: bool
    """Declared on a Flow/Job class (Alembic autogenerate manages it) rather than by the API."""
    paused_at: datetime | None
    next_fire_at: datetime | None
    """None while paused (resuming computes it from then), and until a scheduler computes it
    (after a change made by SQL, e.g. a migration)."""
    last_fire_at: datetime | None
    last_run_id: uuid.UUID | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def name(self) -> str:
        return str(self.cron.name)

    @property
    def flow_slug(self) -> str:
        return str(self.cron.flow_slug)

    @property
    def paused(self) -> bool:
        return self.paused_at is not None


def schedule_from_row(row: Mapping[Any, Any]) -> Schedule:
    return Schedule(
        cron=cron_from_row(row),
        declared=row["declared"],
        paused_at=row["paused_at"],
        next_fire_at=None if row["paused_at"] is not None else row["next_fire_at"],
        last_fire_at=row["last_fire_at"],
        last_run_id=row["last_run_id"],
        last_error=row["last_error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _now(connection: Connection) -> datetime:
    now: datetime = connection.execute(query("schedules_now")).scalar_one()
    return now


def cron_parameters(cron: Cron) -> dict[str, Any]:
    return {
        "name": cron.name,
        "flow_slug": cron.flow_slug,
        "cron": cron.expression,
        "timezone": cron.timezone,
        "input": json.dumps(cron.input),
        "missed": cron.missed,
        "catch_up_limit": cron.catch_up_limit,
        "grace_seconds": cron.grace,
        "time_key": cron.time_key,
    }


def declared_schedule_statement(cron: Cron) -> sa.TextClause:
    """The statement that stores ``cron`` as a declared schedule: created, or its definition
    replaced (a new expression or time zone recomputes its next tick at the next scheduler
    pass; the pause state stays). Its parameters are bound: the Alembic plugin's
    ``op.create_schedule`` and ``op.update_schedule`` run it, and an offline (``--sql``)
    migration renders it."""
    return query("schedules_put_declared").bindparams(**cron_parameters(cron))


def _one(connection: Connection, name: str, statement: str, **parameters: Any) -> Schedule:
    parameters["name"] = name
    row = connection.execute(query(statement), parameters).mappings().one_or_none()
    if row is None:
        raise ScheduleNotFoundError(f"no schedule is named {name!r}")
    return schedule_from_row(row)


def _check_flow(connection: Connection, cron: Cron) -> None:
    """The flow is registered and can take the schedule's input (checked before storing, so a
    bad schedule is refused here rather than failing on every tick)."""
    slug = str(cron.flow_slug)
    row = connection.execute(query("schedules_flow_exists"), {"flow_slug": slug}).first()
    if row is None:
        raise not_registered(connection, slug)
    if row.root_map_step is not None and not isinstance(cron.input, list):
        raise MapInputNotArrayError(slug, row.root_map_step, json_kind(cron.input))


# -- operations on a connection (the sync and async twins below share them) -------------------


def _create(connection: Connection, cron: Cron, declared: bool, paused: bool) -> Schedule:
    _check_flow(connection, cron)
    row = (
        connection.execute(
            query("schedules_insert"),
            {
                **cron_parameters(cron),
                "declared": declared,
                "paused": paused,
                "next_fire_at": cron.next_after(_now(connection)),
            },
        )
        .mappings()
        .one_or_none()
    )
    if row is None:
        raise ScheduleError(
            f"a schedule named {cron.name!r} exists already: choose another name, or change "
            "it with update_schedule()"
        )
    return schedule_from_row(row)


def _update(connection: Connection, name: str, changes: dict[str, Any]) -> Schedule:
    current = _one(connection, name, "schedules_get_for_update")
    try:
        cron = replace(current.cron, **changes)
    except TypeError as exc:
        raise InvalidScheduleError(f"update_schedule({name!r}): {exc}") from None
    _check_flow(connection, cron)
    # A change of when it fires counts from now; otherwise the schedule keeps its next tick.
    timing_changed = (cron.expression, cron.timezone) != (
        current.cron.expression,
        current.cron.timezone,
    )
    next_fire_at = cron.next_after(_now(connection)) if timing_changed else current.next_fire_at
    parameters = cron_parameters(cron)
    del parameters["name"]
    return _one(connection, name, "schedules_update", **parameters, next_fire_at=next_fire_at)


def _pause(connection: Connection, name: str) -> Schedule:
    return _one(connection, name, "schedules_pause")


def _resume(connection: Connection, name: str) -> Schedule:
    current = _one(connection, name, "schedules_get_for_update")
    return _one(
        connection,
        name,
        "schedules_resume",
        next_fire_at=current.cron.next_after(_now(connection)),
    )


def _delete(connection: Connection, name: str) -> None:
    if connection.execute(query("schedules_delete"), {"name": name}).first() is None:
        raise ScheduleNotFoundError(f"no schedule is named {name!r}")


def _get(connection: Connection, name: str) -> Schedule:
    return _one(connection, name, "schedules_get")


def _list(connection: Connection, flow_slug: str | None) -> list[Schedule]:
    rows = connection.execute(query("schedules_list"), {"flow_slug": flow_slug}).mappings()
    return [schedule_from_row(row) for row in rows]


def _trigger(connection: Connection, name: str, fired_by: str | None) -> uuid.UUID:
    schedule = _one(connection, name, "schedules_get_for_update")
    moment = _now(connection)
    # A savepoint: a refused start must not leave its fire record in the caller's transaction.
    with connection.begin_nested():
        run_id = fire(connection, schedule.cron, moment, manual=True, fired_by=fired_by)
    if run_id is None:
        raise ScheduleError(f"schedule {name!r} was triggered at {moment} already")
    return run_id


def _sync_declared(connection: Connection, crons: list[Cron]) -> list[str]:
    changed: list[str] = []
    for cron in crons:
        row = (
            connection.execute(query("schedules_get_for_update"), {"name": cron.name})
            .mappings()
            .one_or_none()
        )
        if row is None:
            _create(connection, cron, declared=True, paused=False)
            changed.append(f"created {cron.name}")
        elif cron_from_row(row).compared() != cron.compared():
            _update(connection, str(cron.name), cron.compared())
            changed.append(f"updated {cron.name}")
    return changed


def _flow_slug(flow: FlowRef) -> str:
    return resolve_flow(flow)[0]


def _bound(flow: FlowRef, cron: Cron) -> Cron:
    slug = _flow_slug(flow)
    if cron.flow_slug not in (None, slug):
        raise InvalidScheduleError(
            f"schedule {cron.name!r} is bound to flow {cron.flow_slug!r}, not {slug!r}"
        )
    return cron.bound(slug, default_name=slug)


# -- public functions --------------------------------------------------------------------------


def create_schedule(bind: SyncBind, flow: FlowRef, cron: Cron, *, paused: bool = False) -> Schedule:
    """Store a schedule that starts runs of ``flow``: ``create_schedule(engine, Report,
    Cron("*/5 * * * *", name="report", input={...}))``. The name defaults to the flow's slug."""
    bound = _bound(flow, cron)
    with connection_for(bind) as connection:
        return _create(connection, bound, declared=False, paused=paused)


async def create_schedule_async(
    bind: AsyncBind, flow: FlowRef, cron: Cron, *, paused: bool = False
) -> Schedule:
    return await run_async(bind, _create, _bound(flow, cron), False, paused)


def update_schedule(
    bind: SyncBind,
    name: str,
    *,
    expression: str | None = None,
    input: Any = ...,
    timezone: str | None = None,
    missed: Missed | None = None,
    catch_up_limit: int | None = None,
    grace: int | None = None,
    time_key: str | EllipsisType | None = ...,
) -> Schedule:
    """Change what is given. A new expression or time zone counts its next tick from now."""
    changes = _changes(
        expression=expression,
        input=input,
        timezone=timezone,
        missed=missed,
        catch_up_limit=catch_up_limit,
        grace=grace,
        time_key=time_key,
    )
    with connection_for(bind) as connection:
        return _update(connection, validate_name(name), changes)


async def update_schedule_async(
    bind: AsyncBind,
    name: str,
    *,
    expression: str | None = None,
    input: Any = ...,
    timezone: str | None = None,
    missed: Missed | None = None,
    catch_up_limit: int | None = None,
    grace: int | None = None,
    time_key: str | EllipsisType | None = ...,
) -> Schedule:
    changes = _changes(
        expression=expression,
        input=input,
        timezone=timezone,
        missed=missed,
        catch_up_limit=catch_up_limit,
        grace=grace,
        time_key=time_key,
    )
    return await run_async(bind, _update, validate_name(name), changes)


def _changes(**given: Any) -> dict[str, Any]:
    """The arguments given: ``...`` for those that may be None, None for the others."""
    may_be_none = ("input", "time_key")
    return {
        key: value
        for key, value in given.items()
        if value is not (... if key in may_be_none else None)
    }


def pause_schedule(bind: SyncBind, name: str) -> Schedule:
    """Stop firing until :func:`resume_schedule` (ticks while paused are not made up)."""
    with connection_for(bind) as connection:
        return _pause(connection, name)


async def pause_schedule_async(bind: AsyncBind, name: str) -> Schedule:
    return await run_async(bind, _pause, name)


def resume_schedule(bind: SyncBind, name: str) -> Schedule:
    """Fire again from the next tick after now."""
    with connection_for(bind) as connection:
        return _resume(connection, name)


async def resume_schedule_async(bind: AsyncBind, name: str) -> Schedule:
    return await run_async(bind, _resume, name)


def delete_schedule(bind: SyncBind, name: str) -> None:
    """Delete a schedule and its fire records (runs it started stay)."""
    with connection_for(bind) as connection:
        _delete(connection, name)


async def delete_schedule_async(bind: AsyncBind, name: str) -> None:
    await run_async(bind, _delete, name)


def get_schedule(bind: SyncBind, name: str) -> Schedule:
    with connection_for(bind) as connection:
        return _get(connection, name)


async def get_schedule_async(bind: AsyncBind, name: str) -> Schedule:
    return await run_async(bind, _get, name)


def list_schedules(bind: SyncBind, flow: FlowRef | None = None) -> list[Schedule]:
    """Every schedule by name (only ``flow``'s when given)."""
    slug = None if flow is None else _flow_slug(flow)
    with connection_for(bind) as connection:
        return _list(connection, slug)


async def list_schedules_async(bind: AsyncBind, flow: FlowRef | None = None) -> list[Schedule]:
    slug = None if flow is None else _flow_slug(flow)
    return await run_async(bind, _list, slug)


def trigger_schedule(bind: SyncBind, name: str) -> uuid.UUID:
    """Start a run now, as the schedule would (its input, the time key set to now), without
    changing its next tick; works on a paused schedule too. Returns the run id."""
    with connection_for(bind) as connection:
        return _trigger(connection, name, None)


async def trigger_schedule_async(bind: AsyncBind, name: str) -> uuid.UUID:
    return await run_async(bind, _trigger, name, None)


def sync_schedules(bind: SyncBind, *flows: type) -> list[str]:
    """Create or update the schedules declared on ``flows`` (for applications without
    Alembic, whose autogenerate otherwise does this); returns what changed. Pause state is left
    alone, and nothing is deleted."""
    crons = [cron for flow in flows for cron in schedules_of(flow)]
    with connection_for(bind) as connection:
        return _sync_declared(connection, crons)


async def sync_schedules_async(bind: AsyncBind, *flows: type) -> list[str]:
    crons = [cron for flow in flows for cron in schedules_of(flow)]
    return await run_async(bind, _sync_declared, crons)
