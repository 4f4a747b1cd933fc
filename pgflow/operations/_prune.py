"""Deleting old runs: ``prune`` and ``prune_async``.

Work is split into batches so that no transaction holds many locks for long: with an Engine each
batch is its own short transaction (running workers are never blocked for more than one batch);
with a Session or Connection every batch runs in the caller's transaction, which the caller
commits.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy.engine import Connection

from pgflow._binds import AsyncBind, SyncBind, connection_for, run_async
from pgflow._sql import query
from pgflow.operations._control import operator_rights
from pgflow.operations._results import PruneReport

P = ParamSpec("P")
T = TypeVar("T")

_Cursor = tuple[datetime, uuid.UUID] | None
"""Where the previous batch of a status ended: (started_at, run_id) of its last run."""

PRUNABLE_STATUSES = ("completed", "failed")
DEFAULT_BATCH_SIZE = 500
WORKER_SILENCE_FLOOR = timedelta(hours=1)
"""Worker rows are pruned only when silent for at least this long, whatever ``older_than``."""
_WORKER_BATCH = 100
LONGEST_RETENTION = timedelta(days=365_000)
"""``older_than`` beyond a thousand years is the same as a thousand years: nothing to prune."""


@dataclass(frozen=True, slots=True)
class _PruneRequest:
    older_than: timedelta
    statuses: list[str]
    flows: list[str] | None
    dry_run: bool
    batch_size: int

    @classmethod
    def make(
        cls,
        older_than: timedelta,
        statuses: Iterable[str],
        flows: Iterable[str] | None,
        dry_run: bool,
        batch_size: int,
    ) -> _PruneRequest:
        if not isinstance(older_than, timedelta) or older_than < timedelta(0):
            raise ValueError(f"older_than must be a timedelta of 0 or more, got {older_than!r}")
        wanted = [str(status) for status in ([statuses] if isinstance(statuses, str) else statuses)]
        unknown = sorted(set(wanted) - set(PRUNABLE_STATUSES))
        if unknown or not wanted:
            raise ValueError(
                f"statuses must be among {list(PRUNABLE_STATUSES)} (started runs are never "
                f"pruned), got {wanted}"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        slugs = None if flows is None else [flows] if isinstance(flows, str) else list(flows)
        # Nothing is older than that; a longer window would put the cutoff before the first
        # timestamp PostgreSQL can hold (an error that would abort the caller's transaction).
        older_than = min(older_than, LONGEST_RETENTION)
        return cls(older_than, sorted(set(wanted)), slugs, dry_run, batch_size)


def prune(
    bind: SyncBind,
    *,
    older_than: timedelta,
    statuses: Sequence[str] = PRUNABLE_STATUSES,
    flows: Sequence[str] | None = None,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[PruneReport], None] | None = None,
) -> PruneReport:
    """Delete runs that finished (``completed`` or ``failed``, cancelled included) more than
    ``older_than`` ago, of ``flows`` (default: all), with their step states, tasks, pgmq
    messages (archived or not) and our rows about them; worker rows of those flows that sent
    no heartbeat for ``older_than``; and rate-limit keys with no booking or read within their
    period (counted in ``extension_rows``; workers forget them too, every upkeep round). A
    ``started`` run is never touched. ``dry_run`` counts instead of deleting. Idempotency keys
    of pruned runs are forgotten (the key can start a new run). ``progress`` is called after
    each batch of runs with the counts so far (``seconds`` is the time taken so far)."""
    request = _PruneRequest.make(older_than, statuses, flows, dry_run, batch_size)

    def execute(
        step: Callable[Concatenate[Connection, P], T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        with connection_for(bind) as connection:
            return step(connection, *args, **kwargs)

    with operator_rights("prune runs"):
        began = time.perf_counter()
        report = execute(_start, request)
        if request.dry_run:
            report = execute(_preview, request, report)
        else:
            for status in request.statuses:
                after: _Cursor = None
                while True:
                    report, after, more = execute(_prune_batch, request, report, status, after)
                    _report_progress(progress, report, began)
                    if not more:
                        break
            while True:
                report, more = execute(_prune_workers, request, report)
                if not more:
                    break
            while True:
                report, more = execute(_prune_rate_keys, report)
                if not more:
                    break
        return replace(report, seconds=time.perf_counter() - began)


async def prune_async(
    bind: AsyncBind,
    *,
    older_than: timedelta,
    statuses: Sequence[str] = PRUNABLE_STATUSES,
    flows: Sequence[str] | None = None,
    dry_run: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[PruneReport], None] | None = None,
) -> PruneReport:
    """:func:`prune` for an async bind (an AsyncEngine gives each batch its own transaction)."""
    request = _PruneRequest.make(older_than, statuses, flows, dry_run, batch_size)
    with operator_rights("prune runs"):
        began = time.perf_counter()
        report = await run_async(bind, _start, request)
        if request.dry_run:
            report = await run_async(bind, _preview, request, report)
        else:
            for status in request.statuses:
                after: _Cursor = None
                while True:
                    report, after, more = await run_async(
                        bind, _prune_batch, request, report, status, after
                    )
                    _report_progress(progress, report, began)
                    if not more:
                        break
            while True:
                report, more = await run_async(bind, _prune_workers, request, report)
                if not more:
                    break
            while True:
                report, more = await run_async(bind, _prune_rate_keys, report)
                if not more:
                    break
        return replace(report, seconds=time.perf_counter() - began)


def _report_progress(
    progress: Callable[[PruneReport], None] | None, report: PruneReport, began: float
) -> None:
    if progress is not None:
        progress(replace(report, seconds=time.perf_counter() - began))


def _start(connection: Connection, request: _PruneRequest) -> PruneReport:
    row = (
        connection.execute(
            query("ops_prune_cutoff"),
            {"older_than": request.older_than, "worker_floor": WORKER_SILENCE_FLOOR},
        )
        .mappings()
        .one()
    )
    return PruneReport(
        cutoff=row["cutoff"], workers_cutoff=row["workers_cutoff"], dry_run=request.dry_run
    )


def _preview(connection: Connection, request: _PruneRequest, report: PruneReport) -> PruneReport:
    row = (
        connection.execute(
            query("ops_prune_preview"),
            {
                "cutoff": report.cutoff,
                "workers_cutoff": report.workers_cutoff,
                "statuses": request.statuses,
                "flows": request.flows,
            },
        )
        .mappings()
        .one()
    )
    return replace(
        report,
        runs=row["runs"],
        step_states=row["step_states"],
        step_tasks=row["step_tasks"],
        messages=row["messages"],
        extension_rows=row["extension_rows"],
        workers=row["workers"],
    )


def _prune_batch(
    connection: Connection,
    request: _PruneRequest,
    report: PruneReport,
    status: str,
    after: _Cursor,
) -> tuple[PruneReport, _Cursor, bool]:
    started_at, run_id = after or (None, None)
    row = (
        connection.execute(
            query("prune_runs_batch"),
            {
                "cutoff": report.cutoff,
                "status": status,
                "flows": request.flows,
                "after_started_at": started_at,
                "after_run_id": run_id,
                "batch_size": request.batch_size,
            },
        )
        .mappings()
        .one()
    )
    updated = replace(
        report,
        runs=report.runs + row["runs"],
        step_states=report.step_states + row["step_states"],
        step_tasks=report.step_tasks + row["step_tasks"],
        messages=report.messages + row["messages"],
        extension_rows=report.extension_rows + row["extension_rows"],
        batches=report.batches + 1,
    )
    cursor = (row["last_started_at"], row["last_run_id"]) if row["matched"] else after
    return updated, cursor, row["matched"] >= request.batch_size


def _prune_workers(
    connection: Connection, request: _PruneRequest, report: PruneReport
) -> tuple[PruneReport, bool]:
    deleted: int = connection.execute(
        query("ops_prune_workers"),
        {"cutoff": report.workers_cutoff, "flows": request.flows, "row_limit": _WORKER_BATCH},
    ).scalar_one()
    return replace(report, workers=report.workers + deleted), deleted >= _WORKER_BATCH


def _prune_rate_keys(connection: Connection, report: PruneReport) -> tuple[PruneReport, bool]:
    """Rate-limit keys with no booking or read within their period (extension/0082), counted
    with our rows."""
    forgotten: int = connection.execute(
        query("prune_rate_log"), {"row_limit": _WORKER_BATCH}
    ).scalar_one()
    return (
        replace(report, extension_rows=report.extension_rows + forgotten),
        forgotten >= _WORKER_BATCH,
    )
