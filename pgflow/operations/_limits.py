"""Reading flow control's live state for operators: ``list_limits`` (docs/flow-control.md)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection, RowMapping

from pgflow._binds import AsyncBind, SyncBind, connection_for, run_async
from pgflow._sql import query


@dataclass(frozen=True, slots=True)
class LimitUse:
    """One limit's use for one key value (or its declaration, when nothing used it yet:
    ``used`` false).

    ``in_use``: for a concurrency limit the tasks in flight, for a rate limit the starts within
    the last period. ``waiting``: tasks held for a slot, or starts booked for later (tasks
    waiting on the rate budget).
    """

    kind: str
    """``"concurrency"`` or ``"rate"``."""
    flow_slug: str
    step_slug: str | None
    limit: int
    per_seconds: float | None
    """A rate limit's period; None for a concurrency limit."""
    key: str | None
    """The key's dotted path in the input; None: one limit for all runs."""
    budget: str | None
    """A named rate limit's name (shared by every flow using it)."""
    used: bool
    key_value: Any
    """The key's value (JSON: str, number, bool; None for a limit without a key)."""
    in_use: int
    waiting: int

    @classmethod
    def from_row(cls, row: RowMapping) -> LimitUse:
        used = row["key_value"] is not None
        return cls(
            kind=row["kind"],
            flow_slug=row["flow_slug"],
            step_slug=row["step_slug"],
            limit=row["max_value"],
            per_seconds=row["per_seconds"],
            key=row["key_path"] or None,
            budget=row["budget"],
            used=used,
            key_value=row["key_value"] if used else None,
            in_use=row["in_use"],
            waiting=row["waiting"],
        )


def list_limits(bind: SyncBind, *, flow: str | None = None) -> list[LimitUse]:
    """Every concurrency and rate limit (of ``flow``, or all) with its live use per key."""
    with connection_for(bind) as connection:
        return _list_limits(connection, flow)


async def list_limits_async(bind: AsyncBind, *, flow: str | None = None) -> list[LimitUse]:
    """:func:`list_limits` for an async bind."""
    return await run_async(bind, _list_limits, flow)


def _list_limits(connection: Connection, flow: str | None) -> list[LimitUse]:
    rows = connection.execute(query("flow_control_limits"), {"flow_slug": flow}).mappings()
    return [LimitUse.from_row(row) for row in rows]
