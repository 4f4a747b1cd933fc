"""Recording task outcomes: completions in batches, failures one by one, retried across lost
connections.

Handlers hand in their outcome and wait until it is recorded (they hold their concurrency slot
until then). One reporter loop owns the report connection: whatever completions arrived while
the previous report was in flight go out together, in one transaction, so an idle worker reports
at once and a busy one commits once per batch instead of once per task.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import psycopg

from pgflow import telemetry
from pgflow.worker._database import ClaimedTask, Connection
from pgflow.worker._executor import Completed, Outcome

_BACKOFF = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 5.0, 5.0, 5.0, 5.0)


@dataclass(slots=True)
class _Report:
    worker_id: uuid.UUID
    task: ClaimedTask
    outcome: Outcome
    fields: dict[str, Any]


class Reporter:
    """Queues outcomes for :meth:`run`, the loop that records them."""

    def __init__(self, connection: Connection, *, on_failed: Callable[[uuid.UUID], None]) -> None:
        self._connection = connection
        self._on_failed = on_failed
        self._pending: list[_Report] = []
        self._arrived = anyio.Event()
        self._recorded = anyio.Event()
        """Set when the reports pending now are recorded (one event per batch, not per task)."""

    async def report(
        self, worker_id: uuid.UUID, task: ClaimedTask, outcome: Outcome, fields: dict[str, Any]
    ) -> None:
        """Return once the outcome is recorded, ignored (task lost) or abandoned."""
        self._pending.append(_Report(worker_id, task, outcome, fields))
        self._arrived.set()
        await self._recorded.wait()

    async def run(self) -> None:
        while True:
            await self._arrived.wait()
            # Handlers that finished in the same round of the event loop report together.
            await anyio.lowlevel.checkpoint()
            self._arrived = anyio.Event()
            batch, self._pending = self._pending, []
            recorded, self._recorded = self._recorded, anyio.Event()
            try:
                await self._record(batch)
            finally:
                recorded.set()

    async def _record(self, batch: list[_Report]) -> None:
        completions: dict[uuid.UUID, list[_Report]] = defaultdict(list)
        for report in batch:
            if isinstance(report.outcome, Completed):
                completions[report.worker_id].append(report)
            else:
                await self._fail(report, report.outcome.error)
        for worker_id, reports in completions.items():
            await self._complete(worker_id, reports)

    async def _complete(self, worker_id: uuid.UUID, reports: list[_Report]) -> None:
        outputs = [r.outcome.output_json for r in reports if isinstance(r.outcome, Completed)]
        params = {
            "worker_id": worker_id,
            "run_ids": [r.task.run_id for r in reports],
            "step_slugs": [r.task.step_slug for r in reports],
            "task_indexes": [r.task.task_index for r in reports],
            "outputs": outputs,
        }
        try:
            rows = await self._with_retries("complete_tasks", params, reports)
        except psycopg.Error as exc:
            if len(reports) > 1:
                # One task the database refuses must not sink the others: one by one.
                for report in reports:
                    await self._complete(worker_id, [report])
                return
            [report] = reports
            error = f"the database refused the output: {type(exc).__name__}: {exc}"
            await self._fail(report, error)
            return
        if rows is None:
            return
        recorded = {row["recorded"] for row in rows}
        for position, report in enumerate(reports, start=1):
            if position in recorded:
                telemetry.emit("task.completed", **report.fields)
            else:
                # Recovered and handed to another worker meanwhile (at-least-once delivery).
                telemetry.emit("task.report_ignored", level=logging.WARNING, **report.fields)

    async def _fail(self, report: _Report, error: str) -> None:
        params = {
            "run_id": report.task.run_id,
            "step_slug": report.task.step_slug,
            "task_index": report.task.task_index,
            "worker_id": report.worker_id,
            "error_message": error,
        }
        rows = await self._with_retries("fail_task", params, [report])
        if rows is None:
            return
        if not rows:
            telemetry.emit("task.report_ignored", level=logging.WARNING, **report.fields)
            return
        telemetry.emit("task.failed", level=logging.WARNING, error=error, **report.fields)
        # A delayed retry sends no NOTIFY (only messages visible now do): let the flow's poller
        # recompute when its next message becomes visible.
        self._on_failed(report.worker_id)

    async def _with_retries(
        self, query: str, params: dict[str, Any], reports: list[_Report]
    ) -> list[dict[str, Any]] | None:
        """The query's rows; None when the connection stayed lost (the stalled-task sweep
        returns such tasks to the queue, so nothing is lost, only delayed)."""
        for attempt, delay in enumerate((*_BACKOFF, None), start=1):
            try:
                return await self._connection.fetch(query, **params)
            except psycopg.OperationalError as exc:
                event, level = (
                    ("task.report_abandoned", logging.ERROR)
                    if delay is None
                    else ("task.report_retry", logging.WARNING)
                )
                for report in reports:
                    telemetry.emit(
                        event, level=level, retry=attempt, error=str(exc), **report.fields
                    )
                if delay is None:
                    return None
                await anyio.sleep(delay)
        return None
