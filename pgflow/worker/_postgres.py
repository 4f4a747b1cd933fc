"""The worker's store on PostgreSQL: one psycopg connection per activity (see _connection.py).

Claims, reports and service calls run on the event loop on asyncio and in threads elsewhere;
heartbeats and LISTEN have threads of their own. Each connection belongs to one activity
(claiming, reporting, the service calls, heartbeats, LISTEN), so no two ever share one. A lost
connection is reopened on next use; the callers decide when to retry. The start-up checks, the
scheduler and the statistics upkeep share code with the rest of the library, which speaks
SQLAlchemy: they use the worker's engine.

Directly on the server every statement is prepared at first use (the claim and completion
statements are large; planning them each time costs the server CPU). Through a transaction
pooler nothing is prepared (pgflow/_db.py), and the LISTEN connection goes to ``listen_conninfo``
(a direct URL), or nowhere: the pollers then wake on their own timer.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from sqlalchemy.engine import Engine

from pgflow import _db, _sql, _tracing
from pgflow.definition import FlowDefinition
from pgflow.schedules import fire_due
from pgflow.worker._connection import (
    CONNECT_TIMEOUT,
    Connection,
    Row,
    on_asyncio_selector_loop,
)
from pgflow.worker._executor import Failed
from pgflow.worker._startup import check_flows
from pgflow.worker._store import (
    ClaimedTask,
    CompletionRecorded,
    DeadlineAction,
    EndedRun,
    FailureRecorded,
    FiredSchedule,
    HeartbeatReply,
    RecoveredTask,
    Registration,
    Rejection,
    SchedulerPass,
    TaskKey,
)

_RATE_KEYS_PER_ROUND = 1000
"""Idle rate-limit keys one upkeep round forgets at most."""


def claimed_from_rows(rows: Sequence[Row]) -> list[ClaimedTask]:
    tasks = []
    for row in rows:
        record = row["task"]
        tasks.append(
            ClaimedTask(
                flow_slug=record["flow_slug"],
                run_id=uuid.UUID(record["run_id"]),
                step_slug=record["step_slug"],
                task_index=record.get("task_index") or 0,
                message_id=record["msg_id"],
                attempt=row["attempt"],
                timeout=row["timeout"],
                record=record,
            )
        )
    return tasks


class PostgresStore:
    """:class:`~pgflow.worker._store.WorkerStore` on PostgreSQL (libpq connection strings).

    ``prepare=False`` for a transaction pooler; ``listen_conninfo`` is where to LISTEN for
    wake-ups (None: nowhere, the pollers' timer alone wakes them); ``engine`` (default: one on
    ``conninfo``) runs the start-up checks, the scheduler and the statistics upkeep.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        prepare: bool = True,
        listen_conninfo: str | None = None,
        engine: Engine | None = None,
    ) -> None:
        self._conninfo = conninfo
        self._prepare = prepare
        self._listen_conninfo = listen_conninfo
        self._owns_engine = engine is None
        self._engine = engine if engine is not None else _db.create_engine(conninfo)
        self._claims = self._connection("claim")
        self._reports = self._connection("report")
        self._service = self._connection("service")
        self._heartbeats = self._connection("heartbeat")

    @property
    def listening(self) -> bool:
        return self._listen_conninfo is not None

    def connection_targets(self) -> dict[str, str]:
        """Each connection this store opens, by name, and where it connects."""
        targets = dict.fromkeys(("claim", "report", "service", "heartbeat"), self._conninfo)
        if self._listen_conninfo is not None:
            targets["listen"] = self._listen_conninfo
        return targets

    def _connection(self, role: str) -> Connection:
        return Connection(
            self._conninfo, application_name=f"pgflow-worker:{role}", prepare=self._prepare
        )

    async def check_flows(
        self, definitions: Sequence[FlowDefinition], *, compile_missing: bool
    ) -> None:
        connections = self.connection_targets()
        await anyio.to_thread.run_sync(
            lambda: check_flows(
                self._engine,
                list(definitions),
                compile_missing=compile_missing,
                connections=connections,
            )
        )

    async def register(self, registrations: Sequence[Registration]) -> None:
        for registration in registrations:
            await self._service.fetch(
                "register_worker",
                worker_id=registration.worker_id,
                queue_name=registration.queue_name,
                function_name=registration.function_name,
            )
            await self._service.fetch("ensure_wakeup_trigger", queue_name=registration.queue_name)

    async def claim(
        self, flow_slug: str, worker_id: uuid.UUID, *, quantity: int, reservation: int, margin: int
    ) -> list[ClaimedTask]:
        rows = await self._claims.fetch(
            "claim_task_batch",
            flow_slug=flow_slug,
            vt=reservation,
            qty=quantity,
            worker_id=worker_id,
            margin=margin,
        )
        tasks = claimed_from_rows(rows)
        if tasks and _tracing.current() is not None:
            # Once per claimed batch, and only while tracing is on.
            stored = await self._claims.fetch(
                "otel_run_trace_contexts", run_ids=list({t.run_id for t in tasks})
            )
            contexts = _tracing.carriers_by_run(stored)
            tasks = [replace(t, trace_context=contexts.get(t.run_id)) for t in tasks]
        return tasks

    async def claim_isolated(
        self, flow_slug: str, worker_id: uuid.UUID, *, quantity: int, reservation: int, margin: int
    ) -> tuple[list[ClaimedTask], list[Rejection]]:
        rows = await self._claims.fetch(
            "claim_tasks_isolated",
            flow_slug=flow_slug,
            vt=reservation,
            qty=quantity,
            worker_id=worker_id,
            margin=margin,
        )
        rejections = [
            Rejection(
                TaskKey(
                    uuid.UUID(str(r["task"]["run_id"])),
                    r["task"]["step_slug"],
                    r["task"]["task_index"],
                ),
                r["rejection"],
            )
            for r in rows
            if r["rejection"] is not None
        ]
        return claimed_from_rows([r for r in rows if r["rejection"] is None]), rejections

    async def release_unstarted(
        self, worker_id: uuid.UUID, running: Sequence[TaskKey]
    ) -> list[TaskKey]:
        rows = await self._claims.fetch(
            "release_unstarted_tasks",
            worker_id=worker_id,
            run_ids=[key.run_id for key in running],
            step_slugs=[key.step_slug for key in running],
            task_indexes=[key.task_index for key in running],
        )
        return [TaskKey(r["run_id"], r["step_slug"], r["task_index"]) for r in rows]

    async def next_visible_at(self, flow_slug: str) -> datetime | None:
        rows = await self._claims.fetch("next_visible_at", queue_name=flow_slug)
        at: datetime | None = rows[0]["at"]
        return at

    async def complete(
        self, worker_id: uuid.UUID, tasks: Sequence[ClaimedTask], outputs: Sequence[str]
    ) -> CompletionRecorded:
        rows = await self._reports.fetch(
            "complete_task_batch",
            worker_id=worker_id,
            run_ids=[t.run_id for t in tasks],
            step_slugs=[t.step_slug for t in tasks],
            task_indexes=[t.task_index for t in tasks],
            outputs=list(outputs),
        )
        # Rows with recorded NULL name the runs the batch ended.
        return CompletionRecorded(
            positions={row["recorded"] - 1 for row in rows if row["recorded"] is not None},
            ended_runs=tuple(
                EndedRun(
                    row["ended_run_id"],
                    row["ended_flow_slug"],
                    row["ended_status"],
                    row["run_started_at"],
                    row["run_ended_at"],
                )
                for row in rows
                if row["recorded"] is None
            ),
        )

    async def fail(
        self, worker_id: uuid.UUID, task: ClaimedTask, failure: Failed
    ) -> FailureRecorded | None:
        rows = await self._reports.fetch(
            "fail_task_outcome",
            run_id=task.run_id,
            step_slug=task.step_slug,
            task_index=task.task_index,
            worker_id=worker_id,
            error_message=failure.error,
            error_type=failure.error_type,
            traceback=failure.traceback,
            retryable=failure.retryable,
        )
        return FailureRecorded(**rows[0]) if rows else None

    def heartbeat(self, worker_ids: Sequence[uuid.UUID]) -> list[HeartbeatReply]:
        rows = self._heartbeats.fetch_blocking("heartbeat", {"worker_ids": list(worker_ids)})
        return [HeartbeatReply(r["worker_id"], r["deprecated_at"] is not None) for r in rows]

    async def recover(
        self, *, heartbeat_timeout: int, max_requeues: int, sweeper_ids: Sequence[uuid.UUID]
    ) -> list[RecoveredTask]:
        rows = await self._service.fetch_all(
            ("heartbeat", {"worker_ids": list(sweeper_ids)}),
            (
                "recover_stalled_tasks",
                {"heartbeat_timeout": heartbeat_timeout, "max_requeues": max_requeues},
            ),
        )
        return [
            RecoveredTask(r["run_id"], r["step_slug"], r["task_index"], r["action"]) for r in rows
        ]

    async def mark_stopped(self, worker_ids: Sequence[uuid.UUID]) -> None:
        await self._service.fetch("mark_stopped", worker_ids=list(worker_ids))

    async def run_input(self, run_id: uuid.UUID) -> Any:
        rows = await self._service.fetch("run_input", run_id=run_id)
        return rows[0]["input"] if rows else None

    async def cancelled_runs(self, run_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        rows = await self._service.fetch("cancelled_runs", run_ids=list(run_ids))
        return {row["run_id"] for row in rows}

    async def refresh_statistics(self, queue_names: Sequence[str]) -> list[str]:
        return await anyio.to_thread.run_sync(self._refresh_statistics, list(queue_names))

    def _refresh_statistics(self, queue_names: list[str]) -> list[str]:
        with self._engine.begin() as connection:
            rows = connection.execute(
                _sql.query("refresh_statistics"), {"queue_names": queue_names}
            )
            analyzed = [str(row.analyzed_table) for row in rows]
        # The same upkeep round forgets idle rate-limit keys (extension/0082), a batch a round.
        with self._engine.begin() as connection:
            connection.execute(_sql.query("prune_rate_log"), {"row_limit": _RATE_KEYS_PER_ROUND})
        return analyzed

    async def enforce_deadlines(self, limit: int) -> list[DeadlineAction]:
        return await anyio.to_thread.run_sync(self._enforce_deadlines, limit)

    def _enforce_deadlines(self, limit: int) -> list[DeadlineAction]:
        with self._engine.begin() as connection:
            rows = connection.execute(_sql.query("enforce_deadlines"), {"row_limit": limit})
            actions = [
                DeadlineAction(
                    r.kind,
                    r.run_id,
                    r.step_slug,
                    r.action,
                    r.waiting_since,
                    None if r.waited_ms is None else float(r.waited_ms),
                )
                for r in rows
            ]
            # The waits this sweep ended, drawn in their runs' traces (when tracing is on).
            _tracing.record_ended_waits(
                connection,
                [(a.run_id, a.step_slug) for a in actions if a.step_slug is not None],
            )
            return actions

    async def fire_schedules(self, *, fired_by: str, limit: int) -> SchedulerPass:
        return await anyio.to_thread.run_sync(self._fire_schedules, fired_by, limit)

    def _fire_schedules(self, fired_by: str, limit: int) -> SchedulerPass:
        with self._engine.begin() as connection:  # one transaction for the pass
            done = fire_due(connection, fired_by=fired_by, limit=limit)
            more_due = done.claimed == limit
            seconds = (
                None
                if more_due
                else connection.execute(_sql.query("schedules_seconds_until_due")).scalar_one()
            )
        return SchedulerPass(
            tuple(FiredSchedule(*fire) for fire in done.fired),
            claimed=done.claimed,
            more_due=more_due,
            seconds_until_due=None if seconds is None else float(seconds),
        )

    async def prune_schedule_fires(self, keep: timedelta) -> int:
        return await anyio.to_thread.run_sync(self._prune_schedule_fires, keep)

    def _prune_schedule_fires(self, keep: timedelta) -> int:
        with self._engine.begin() as connection:
            pruned: int = connection.execute(
                _sql.query("schedules_prune_fires"), {"keep_seconds": keep.total_seconds()}
            ).scalar_one()
        return pruned

    def wait_for_wakeups(self, stop: threading.Event, wake: Callable[[str], None]) -> None:
        if self._listen_conninfo is None:
            return
        while not stop.is_set():
            try:
                with psycopg.connect(
                    self._listen_conninfo,
                    autocommit=True,
                    application_name="pgflow-worker:listen",
                    connect_timeout=CONNECT_TIMEOUT,
                ) as connection:
                    connection.execute(_sql.psycopg_text("listen_for_wakeups"))
                    while not stop.is_set():
                        for notice in connection.notifies(timeout=0.5):
                            wake(notice.payload)
                            if stop.is_set():
                                break
            except (psycopg.OperationalError, psycopg.InterfaceError):
                stop.wait(1.0)

    async def wakeups_on_loop(self, wake: Callable[[str], None]) -> bool:
        """:meth:`wait_for_wakeups` on the event loop (``wake`` is called there, with no thread
        to wake first), until cancelled; False where psycopg's async connection cannot run (the
        caller then uses :meth:`wait_for_wakeups` in a thread)."""
        if self._listen_conninfo is None:
            return True
        if not on_asyncio_selector_loop():
            return False
        while True:
            try:
                connection = await psycopg.AsyncConnection.connect(
                    self._listen_conninfo,
                    autocommit=True,
                    application_name="pgflow-worker:listen",
                    connect_timeout=CONNECT_TIMEOUT,
                )
                try:
                    await connection.execute(_sql.psycopg_text("listen_for_wakeups"))
                    async for notice in connection.notifies():
                        wake(notice.payload)
                finally:
                    with anyio.CancelScope(shield=True):
                        await connection.close()
            except (psycopg.OperationalError, psycopg.InterfaceError):
                await anyio.sleep(1.0)

    async def close(self) -> None:
        for connection in (self._claims, self._reports, self._service):
            await connection.close()
        # The heartbeat thread has ended by now; its connection is closed here, from any thread.
        await anyio.to_thread.run_sync(self._heartbeats.discard)
        if self._owns_engine:
            await anyio.to_thread.run_sync(self._engine.dispose)
