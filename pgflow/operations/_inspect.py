"""Reading runs and workers for operators: ``list_runs``, ``describe_run``, ``list_workers``."""

from __future__ import annotations

import contextlib
import json
import re
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from pgflow._binds import AsyncBind, RunId, SyncBind, as_run_id, connection_for, run_async
from pgflow._sql import query
from pgflow.client import get_run, get_task_failures
from pgflow.errors import RunNotFoundError
from pgflow.operations._results import (
    ResumeRecord,
    RunDetails,
    RunSummary,
    StepSummary,
    SubflowLink,
    WorkerInfo,
)

LISTABLE_STATUSES = ("started", "completed", "failed", "cancelled")


def list_runs(
    bind: SyncBind,
    *,
    flow: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
    waiting: bool = False,
    key: tuple[str, Any] | None = None,
) -> list[RunSummary]:
    """Runs, newest first. ``status`` is one of upstream's (``started``, ``completed``,
    ``failed``) or ``cancelled`` (failed runs that were cancelled); ``since`` bounds the start
    time; ``waiting=True`` keeps the runs with a step waiting for a signal or, a subflow step,
    for its child runs (docs/waiting.md); ``key=("tenant", "acme")`` the runs whose input has
    that value at that (dotted) path, as a limit's key reads it (docs/flow-control.md)."""
    _check_listing(status, limit)
    with connection_for(bind) as connection:
        return _list_runs(connection, flow, status, since, limit, waiting=waiting, key=key)


async def list_runs_async(
    bind: AsyncBind,
    *,
    flow: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    limit: int = 50,
    waiting: bool = False,
    key: tuple[str, Any] | None = None,
) -> list[RunSummary]:
    """:func:`list_runs` for an async bind."""
    _check_listing(status, limit)
    return await run_async(bind, _list_runs, flow, status, since, limit, waiting=waiting, key=key)


def resolve_run_id(bind: SyncBind, run_id_or_prefix: str | uuid.UUID) -> uuid.UUID:
    """A whole run id, or the one run whose id starts with this prefix (hex digits and dashes,
    at least 4 digits, as the dashboard's search accepts); ``RunNotFoundError`` names what
    matched otherwise."""
    if isinstance(run_id_or_prefix, uuid.UUID):
        return run_id_or_prefix
    text = run_id_or_prefix.strip().lower()
    with contextlib.suppress(ValueError):
        return uuid.UUID(text)
    digits = text.replace("-", "")
    if not re.fullmatch(r"[0-9a-f]{4,31}", digits):
        raise RunNotFoundError(
            f"{run_id_or_prefix!r} is neither a run id nor a prefix of one (4 or more hex digits)"
        )
    low, high = uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))
    with connection_for(bind) as connection:
        found = list(
            connection.execute(
                query("ops_run_ids_with_prefix"), {"low": low, "high": high, "row_limit": 2}
            ).scalars()
        )
    if not found:
        raise RunNotFoundError(f"no run id starts with {text!r}")
    if len(found) > 1:
        raise RunNotFoundError(
            f"several runs start with {text!r} ({found[0]}, {found[1]}, …): give more digits"
        )
    run_id: uuid.UUID = found[0]
    return run_id


def describe_run(bind: SyncBind, run_id: RunId) -> RunDetails | None:
    """The run, its steps (status, tasks, attempts, durations, last error, output size) and its
    resumes; ``None`` if no run has this id."""
    with connection_for(bind) as connection:
        return _describe(connection, as_run_id(run_id))


async def describe_run_async(bind: AsyncBind, run_id: RunId) -> RunDetails | None:
    """:func:`describe_run` for an async bind."""
    return await run_async(bind, _describe, as_run_id(run_id))


def list_workers(
    bind: SyncBind, *, flow: str | None = None, stale_after: int = 30, limit: int = 100
) -> list[WorkerInfo]:
    """Worker rows (Python and TypeScript workers alike), latest heartbeat first. A worker not
    heard from for ``stale_after`` seconds is ``dead`` (or ``stopped`` if it said so)."""
    with connection_for(bind) as connection:
        return _list_workers(connection, flow, stale_after, limit)


async def list_workers_async(
    bind: AsyncBind, *, flow: str | None = None, stale_after: int = 30, limit: int = 100
) -> list[WorkerInfo]:
    """:func:`list_workers` for an async bind."""
    return await run_async(bind, _list_workers, flow, stale_after, limit)


def _check_listing(status: str | None, limit: int) -> None:
    if status is not None and status not in LISTABLE_STATUSES:
        raise ValueError(f"status must be one of {list(LISTABLE_STATUSES)}, got {status!r}")
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")


def _list_runs(
    connection: Connection,
    flow: str | None,
    status: str | None,
    since: datetime | None,
    limit: int,
    *,
    waiting: bool = False,
    key: tuple[str, Any] | None = None,
) -> list[RunSummary]:
    rows = connection.execute(
        query("ops_list_runs"),
        {
            "flow_slug": flow,
            "status": status,
            "since": since,
            "row_limit": limit,
            "waiting": waiting,
            "key_path": None if key is None else key[0].split("."),
            "key_value": None if key is None else json.dumps(key[1]),
        },
    ).mappings()
    return [RunSummary.from_row(row) for row in rows]


def _describe(connection: Connection, run_id: RunId) -> RunDetails | None:
    run = get_run(connection, run_id)
    if run is None:
        return None
    steps = connection.execute(query("ops_run_steps"), {"run_id": run_id}).mappings()
    resumes = connection.execute(query("ops_run_resumes"), {"run_id": run_id}).mappings()
    deadline = connection.execute(query("ops_run_deadline"), {"run_id": run_id}).mappings().first()
    links = connection.execute(query("subflow_links"), {"run_id": run_id}).mappings().all()
    subflow: dict[str, list[SubflowLink]] = {"parent": [], "child": []}
    for row in links:
        subflow[row["relation"]].append(
            SubflowLink(
                run_id=row["other_run_id"],
                flow_slug=row["other_flow_slug"],
                step_slug=row["step_slug"],
                task_index=row["task_index"],
                status=row["other_status"],
                outcome=row["outcome"],
                started_at=row["child_started_at"],
            )
        )
    return RunDetails(
        run=run,
        steps=tuple(StepSummary.from_row(row) for row in steps),
        resumes=tuple(ResumeRecord(**row) for row in resumes),
        failures=get_task_failures(connection, run_id),
        deadline_at=None if deadline is None else deadline["deadline_at"],
        deadline_source=None if deadline is None else deadline["source"],
        parent=subflow["parent"][0] if subflow["parent"] else None,
        children=tuple(subflow["child"]),
    )


def _list_workers(
    connection: Connection, flow: str | None, stale_after: int, limit: int
) -> list[WorkerInfo]:
    rows = connection.execute(
        query("ops_list_workers"),
        {"flow_slug": flow, "stale_after": stale_after, "row_limit": limit},
    ).mappings()
    return [WorkerInfo.from_row(row) for row in rows]
