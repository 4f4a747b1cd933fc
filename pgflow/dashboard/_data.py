"""What the dashboard reads: named queries from ``pgflow/sql/dashboard.sql`` and the runs list.

The runs list has optional filters, so it is built with SQLAlchemy Core (bound parameters
only) rather than one statement of ``x IS NULL OR ...`` clauses that a generic plan could not
serve from an index.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.dialects.postgresql import aggregate_order_by
from sqlalchemy.engine import Connection, Engine

from pgflow._sql import query

Row = dict[str, Any]

# "cancelled": failed runs with a cancellation record; "failed" excludes them.
RUN_STATUSES = ("started", "completed", "failed", "cancelled")
TASK_STATUSES = ("queued", "started", "completed", "failed", "cancelled", "skipped")

_runs = sa.table(
    "runs",
    sa.column("run_id", PG_UUID(as_uuid=True)),
    sa.column("flow_slug", sa.Text),
    sa.column("status", sa.Text),
    sa.column("remaining_steps", sa.Integer),
    sa.column("started_at", sa.DateTime(timezone=True)),
    sa.column("completed_at", sa.DateTime(timezone=True)),
    sa.column("failed_at", sa.DateTime(timezone=True)),
    schema="pgflow",
)
_cancellations = sa.table(
    "run_cancellations",
    sa.column("run_id", PG_UUID(as_uuid=True)),
    sa.column("reason", sa.Text),
    schema="pgflow_python",
)
_lineage = sa.table(
    "run_lineage",
    sa.column("run_id", PG_UUID(as_uuid=True)),
    sa.column("restart_of_run_id", PG_UUID(as_uuid=True)),
    schema="pgflow_python",
)
_fires = sa.table(
    "schedule_fires",
    sa.column("run_id", PG_UUID(as_uuid=True)),
    sa.column("schedule_name", sa.Text),
    schema="pgflow_python",
)
_resumes = sa.table(
    "run_resumes",
    sa.column("run_id", PG_UUID(as_uuid=True)),
    sa.column("failed_at", sa.DateTime(timezone=True)),
    sa.column("resumed_at", sa.DateTime(timezone=True)),
    schema="pgflow_python",
)


def _resume_times(column: sa.ColumnClause[Any]) -> sa.ScalarSelect[Any]:
    """One of a run's resume times, oldest resume first (NULL: never resumed)."""
    ordered = aggregate_order_by(column, _resumes.c.resumed_at)
    return (
        sa.select(sa.func.array_agg(ordered))
        .where(_resumes.c.run_id == _runs.c.run_id)
        .scalar_subquery()
    )


@contextmanager
def _reading(engine: Engine, isolation_level: str | None = None) -> Iterator[Connection]:
    """A read transaction with the dashboard's settings (see dashboard_read_settings)."""
    connection = engine.connect()
    if isolation_level is not None:
        connection = connection.execution_options(isolation_level=isolation_level)
    with connection, connection.begin():
        connection.execute(query("dashboard_read_settings"))
        yield connection


def _fetch(connection: Connection, name: str, **params: Any) -> list[Row]:
    return [dict(row) for row in connection.execute(query(name), params).mappings()]


def _rows(engine: Engine, name: str, **params: Any) -> list[Row]:
    with _reading(engine) as connection:
        return _fetch(connection, name, **params)


def rows(engine: Engine, name: str, **params: Any) -> list[Row]:
    """The rows of named query ``name``, read with the dashboard's settings."""
    return _rows(engine, name, **params)


def _row(engine: Engine, name: str, **params: Any) -> Row | None:
    rows = _rows(engine, name, **params)
    return rows[0] if rows else None


# --- overview ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlowStats:
    flow_slug: str
    flow_type: str
    started: int
    completed: int
    failed: int  # not counting cancelled runs (failed runs with a cancellation record)
    cancelled: int
    running: int
    p50_seconds: float | None
    p95_seconds: float | None
    queue_length: int | None = None
    queue_visible: int | None = None
    oldest_message_seconds: int | None = None

    @property
    def failure_rate(self) -> float | None:
        """Failed over completed + failed: an operator's cancel is not a failure."""
        ended = self.completed + self.failed
        return self.failed / ended if ended else None


@dataclass(frozen=True)
class Overview:
    since: datetime
    flows: list[FlowStats]
    throughput: list[Row]  # bucket_start, completed, failed
    workers: Row  # alive, stale, stopped


def overview(engine: Engine, *, now: datetime, stale_seconds: int) -> Overview:
    since = now - timedelta(hours=24)
    with _reading(engine) as connection:
        queue_rows = _fetch(connection, "dashboard_queue_metrics")
        stats = _fetch(connection, "dashboard_flow_stats", since=since)
        throughput = _fetch(connection, "dashboard_throughput", since=since, bucket="1 hour")
        worker_counts = _fetch(connection, "dashboard_worker_counts", stale_seconds=stale_seconds)
    queues = {row["flow_slug"]: row["metrics"] or {} for row in queue_rows}
    flows = []
    for row in stats:
        metrics = queues.get(row["flow_slug"], {})
        flows.append(
            FlowStats(
                **row,
                queue_length=metrics.get("queue_length"),
                queue_visible=metrics.get("queue_visible_length"),
                oldest_message_seconds=metrics.get("oldest_msg_age_sec"),
            )
        )
    workers = worker_counts[0] if worker_counts else {}
    return Overview(since=since, flows=flows, throughput=throughput, workers=workers)


# --- flows ------------------------------------------------------------------------------------


def flows(engine: Engine) -> list[Row]:
    return _rows(engine, "dashboard_flows")


def flow(engine: Engine, flow_slug: str) -> Row | None:
    return _row(engine, "dashboard_flow", flow_slug=flow_slug)


def flow_steps(engine: Engine, flow_slug: str) -> list[Row]:
    return _rows(engine, "dashboard_flow_steps", flow_slug=flow_slug)


# --- runs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFilter:
    flow_slug: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    run_id_prefix: str | None = None  # lower-case hex digits and dashes


@dataclass(frozen=True)
class Cursor:
    """Keyset position: the last row shown (runs are listed newest first)."""

    started_at: datetime
    run_id: uuid.UUID


def uuid_prefix_bounds(prefix: str) -> tuple[uuid.UUID, uuid.UUID]:
    """The smallest and largest UUIDs starting with ``prefix`` (hex digits, dashes ignored),
    so a prefix search is a range scan of the primary key."""
    digits = prefix.replace("-", "")
    return uuid.UUID(digits.ljust(32, "0")), uuid.UUID(digits.ljust(32, "f"))


def _filtered(statement: sa.Select[Any], run_filter: RunFilter) -> sa.Select[Any]:
    if run_filter.flow_slug is not None:
        statement = statement.where(_runs.c.flow_slug == run_filter.flow_slug)
    if run_filter.status == "cancelled":
        statement = statement.where(_cancellations.c.run_id.is_not(None))
    elif run_filter.status is not None:
        statement = statement.where(_runs.c.status == run_filter.status)
        if run_filter.status == "failed":
            statement = statement.where(_cancellations.c.run_id.is_(None))
    if run_filter.since is not None:
        statement = statement.where(_runs.c.started_at >= run_filter.since)
    if run_filter.until is not None:
        statement = statement.where(_runs.c.started_at < run_filter.until)
    if run_filter.run_id_prefix:
        low, high = uuid_prefix_bounds(run_filter.run_id_prefix)
        statement = statement.where(_runs.c.run_id.between(low, high))
    return statement


def _with_notes(*columns: Any) -> sa.Select[Any]:
    return sa.select(
        *columns,
        _cancellations.c.run_id.is_not(None).label("cancelled"),
        _cancellations.c.reason.label("cancel_reason"),
        _lineage.c.restart_of_run_id,
        _fires.c.schedule_name,
    ).select_from(
        _runs.outerjoin(_cancellations, _cancellations.c.run_id == _runs.c.run_id)
        .outerjoin(_lineage, _lineage.c.run_id == _runs.c.run_id)
        .outerjoin(_fires, _fires.c.run_id == _runs.c.run_id)
    )


def runs_page(
    engine: Engine, run_filter: RunFilter, *, after: Cursor | None, limit: int
) -> list[Row]:
    statement = _filtered(
        _with_notes(
            _runs.c.run_id,
            _runs.c.flow_slug,
            _runs.c.status,
            _runs.c.remaining_steps,
            _runs.c.started_at,
            _runs.c.completed_at,
            _runs.c.failed_at,
            # Durations leave out the time a resumed run sat failed.
            _resume_times(_resumes.c.failed_at).label("resumes_failed_at"),
            _resume_times(_resumes.c.resumed_at).label("resumed_at"),
        ),
        run_filter,
    )
    if after is not None:
        statement = statement.where(
            sa.tuple_(_runs.c.started_at, _runs.c.run_id)
            < sa.tuple_(
                sa.literal(after.started_at, sa.DateTime(timezone=True)),
                sa.literal(after.run_id, PG_UUID(as_uuid=True)),
            )
        )
    statement = statement.order_by(_runs.c.started_at.desc(), _runs.c.run_id.desc()).limit(limit)
    with _reading(engine) as connection:
        return [dict(row) for row in connection.execute(statement).mappings()]


def runs_for_action(engine: Engine, run_filter: RunFilter, action: str, *, limit: int) -> list[Row]:
    """The runs a filter matches that a bulk ``cancel`` (started) or ``retry`` (failed, not yet
    retried) could act on, newest first."""
    retry = sa.alias(_lineage, "retry")
    statement = _filtered(
        _with_notes(
            _runs.c.run_id,
            _runs.c.flow_slug,
            _runs.c.status,
            _runs.c.started_at,
            sa.select(retry.c.run_id)
            .where(retry.c.restart_of_run_id == _runs.c.run_id)
            .limit(1)
            .scalar_subquery()
            .label("retried_as_run_id"),
        ),
        run_filter,
    )
    statement = statement.where(_runs.c.status == ("started" if action == "cancel" else "failed"))
    statement = statement.order_by(_runs.c.started_at.desc(), _runs.c.run_id.desc()).limit(limit)
    with _reading(engine) as connection:
        return [dict(row) for row in connection.execute(statement).mappings()]


def run_summary(engine: Engine, run_id: uuid.UUID) -> Row | None:
    """The run's row of the run page, without its input and output."""
    return _row(engine, "dashboard_run", run_id=run_id, preview_chars=0)


def schedule_last_runs(engine: Engine) -> dict[str, Row]:
    """Each schedule's latest fire (tick or manual trigger): run_id, fired_at, manual, status."""
    return {row["schedule_name"]: row for row in _rows(engine, "dashboard_schedule_last_runs")}


# --- one run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunDetail:
    run: Row
    steps: list[Row]
    step_shapes: list[Row]  # dashboard_flow_steps rows, for the DAG
    tasks: list[Row]
    failures: list[Row]  # failed attempts, oldest first


def run_detail(
    engine: Engine,
    run_id: uuid.UUID,
    *,
    preview_chars: int,
    tasks_per_step: int,
    failures_limit: int = 200,
) -> RunDetail | None:
    # One transaction at REPEATABLE READ so the run, its steps and its tasks agree.
    with _reading(engine, "REPEATABLE READ") as connection:
        run = (
            connection.execute(
                query("dashboard_run"), {"run_id": run_id, "preview_chars": preview_chars}
            )
            .mappings()
            .first()
        )
        if run is None:
            return None
        flow_slug = run["flow_slug"]
        steps = connection.execute(
            query("dashboard_run_steps"),
            {"run_id": run_id, "flow_slug": flow_slug, "preview_chars": preview_chars},
        ).mappings()
        steps_rows = [dict(row) for row in steps]
        shapes = connection.execute(query("dashboard_flow_steps"), {"flow_slug": flow_slug})
        shape_rows = [dict(row) for row in shapes.mappings()]
        tasks = connection.execute(
            query("dashboard_run_tasks"),
            {
                "run_id": run_id,
                "flow_slug": flow_slug,
                "preview_chars": preview_chars,
                "per_step": tasks_per_step,
            },
        ).mappings()
        task_rows = [dict(row) for row in tasks]
        failures = _fetch(
            connection,
            "dashboard_run_failures",
            run_id=run_id,
            preview_chars=preview_chars,
            limit=failures_limit,
        )
    return RunDetail(
        run=dict(run),
        steps=steps_rows,
        step_shapes=shape_rows,
        tasks=task_rows,
        failures=failures,
    )


def step_tasks_page(
    engine: Engine,
    run_id: uuid.UUID,
    step_slug: str,
    *,
    after_index: int,
    limit: int,
    preview_chars: int,
    status: str | None = None,
) -> list[Row]:
    return _rows(
        engine,
        "dashboard_step_tasks_page",
        run_id=run_id,
        step_slug=step_slug,
        after_index=after_index,
        status=status,
        limit=limit,
        preview_chars=preview_chars,
    )


MISSING = object()  # run_value of a run that does not exist


def run_value(engine: Engine, run_id: uuid.UUID, which: str) -> object:
    """The run's whole input or output; ``MISSING`` when the run does not exist."""
    row = _row(engine, "dashboard_run_value", run_id=run_id, which=which)
    return MISSING if row is None else row["value"]


def task_value(engine: Engine, run_id: uuid.UUID, step_slug: str, task_index: int) -> Row | None:
    return _row(
        engine, "dashboard_task_value", run_id=run_id, step_slug=step_slug, task_index=task_index
    )


def step_error(engine: Engine, run_id: uuid.UUID, step_slug: str) -> Row | None:
    return _row(engine, "dashboard_step_error", run_id=run_id, step_slug=step_slug)


# --- workers ----------------------------------------------------------------------------------


def workers_page(
    engine: Engine,
    *,
    now: datetime,
    stale_seconds: int,
    after: tuple[datetime, uuid.UUID] | None,
    limit: int,
) -> list[Row]:
    return _rows(
        engine,
        "dashboard_workers_page",
        stale_seconds=stale_seconds,
        since=now - timedelta(hours=1),
        after_heartbeat=after[0] if after else None,
        after_worker_id=after[1] if after else None,
        limit=limit,
    )


@dataclass(frozen=True)
class ReplicaLag:
    """What a streaming replica says of itself: ``seconds`` behind its primary's last replayed
    commit (0 when it has replayed all it received), ``None`` when it is not a replica."""

    replica: bool
    seconds: float | None


def replica_lag(engine: Engine) -> ReplicaLag:
    with engine.connect() as connection:
        row = connection.execute(query("dashboard_replica_lag")).mappings().one()
    seconds = row["lag_seconds"]
    return ReplicaLag(bool(row["replica"]), None if seconds is None else float(seconds))


def database_now(engine: Engine) -> datetime:
    with engine.connect() as connection:
        value = connection.execute(sa.select(sa.func.now())).scalar_one()
    if not isinstance(value, datetime):
        raise TypeError(f"now() returned {value!r}")
    return value
