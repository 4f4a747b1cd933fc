"""Recording task outcomes: completions in batches, failures one by one, kept until recorded.

Handlers hand in their outcome and wait until it is recorded (they hold their concurrency slot
until then). One reporter loop records them: whatever completions arrived while the previous
report was in flight go out together, in one transaction, so an idle worker reports at once and
a busy one commits once per batch instead of once per task.

Across a database outage a report is retried for as long as the process lives: every report is
fenced in SQL (it counts only while this worker still holds the task), so repeating one whose
first try did commit records nothing twice. Giving up instead would leave the task ``started``
until the stalled-task sweep, then run the handler again. A report that lost a race for a lock
(a deadlock, a serialization failure, a lock timeout) rolled back whole: it is retried the same
way, never taken for the handler's failure.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeVar

import anyio
import anyio.lowlevel

from pgflow import telemetry
from pgflow.errors import ConnectionLost
from pgflow.worker._connection import contention
from pgflow.worker._executor import Completed, Failed, Outcome, describe, sanitize
from pgflow.worker._privileges import recording_privilege_error
from pgflow.worker._store import ClaimedTask, WorkerStore

_BACKOFF = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
T = TypeVar("T")


@dataclass(slots=True)
class _Report:
    worker_id: uuid.UUID
    task: ClaimedTask
    outcome: Outcome
    fields: dict[str, Any]


class Reporter:
    """Queues outcomes for :meth:`run`, the loop that records them."""

    def __init__(self, store: WorkerStore, *, on_failed: Callable[[uuid.UUID], None]) -> None:
        self._store = store
        self._on_failed = on_failed
        self._pending: list[_Report] = []
        self._arrived = anyio.Event()
        self._recorded = anyio.Event()
        """Set when the reports pending now are recorded (one event per batch, not per task)."""

    async def report(
        self, worker_id: uuid.UUID, task: ClaimedTask, outcome: Outcome, fields: dict[str, Any]
    ) -> None:
        """Return once the outcome is recorded or ignored (the task was no longer ours)."""
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
                await self._fail(report, report.outcome)
        for worker_id, reports in completions.items():
            await self._complete(worker_id, reports)

    async def _complete(self, worker_id: uuid.UUID, reports: list[_Report]) -> None:
        outputs = [r.outcome.output_json for r in reports if isinstance(r.outcome, Completed)]
        tasks = [r.task for r in reports]
        try:
            recorded = await self._until_recorded(
                lambda: self._store.complete(worker_id, tasks, outputs), reports
            )
        except Exception as exc:
            if len(reports) > 1:
                # One task the database refuses must not sink the others: one by one.
                for report in reports:
                    await self._complete(worker_id, [report])
                return
            [report] = reports
            await self._fail(report, Failed(f"the database refused the output: {describe(exc)}"))
            return
        for position, report in enumerate(reports):
            if position in recorded.positions:
                telemetry.emit("task.completed", **report.fields)
            else:
                # Recovered and handed to another worker meanwhile (at-least-once delivery),
                # or recorded by an earlier try whose reply was lost.
                telemetry.emit("task.report_ignored", level=logging.WARNING, **report.fields)
        for run in recorded.ended_runs:
            # A completion fails a run when a step feeding a map returned no array.
            _run_ended(f"run.{run.status}", run.flow_slug, run.run_id, run.started_at, run.ended_at)

    async def _fail(self, report: _Report, failure: Failed) -> None:
        store, task, worker_id = self._store, report.task, report.worker_id
        failure = replace(failure, error=sanitize(failure.error))
        try:
            recorded = await self._until_recorded(
                lambda: store.fail(worker_id, task, failure), [report]
            )
        except Exception as exc:
            # The message itself may be what the database refuses: record a plain one.
            failure = Failed(
                f"the worker could not record this attempt's error ({describe(exc)})",
                retryable=failure.retryable,
            )
            try:
                recorded = await self._until_recorded(
                    lambda: store.fail(worker_id, task, failure), [report]
                )
            except Exception as again:
                # Left started: the stalled-task sweep returns it to the queue.
                telemetry.emit(
                    "task.report_failed",
                    level=logging.ERROR,
                    error=describe(again),
                    **report.fields,
                )
                return
        if recorded is None:
            telemetry.emit("task.report_ignored", level=logging.WARNING, **report.fields)
            return
        telemetry.emit(
            "task.failed",
            level=logging.WARNING,
            error=failure.error,
            error_type=failure.error_type,
            retryable=failure.retryable,
            retry_at=None if recorded.retry_at is None else recorded.retry_at.isoformat(),
            exception=failure.traceback,
            **({"step_skipped": True} if recorded.step_skipped else {}),
            **report.fields,
        )
        if recorded.run_completed_at is not None:
            _run_ended(
                "run.completed",
                task.flow_slug,
                task.run_id,
                recorded.run_started_at,
                recorded.run_completed_at,
            )
        if recorded.run_failed:
            _run_ended(
                "run.failed",
                task.flow_slug,
                task.run_id,
                recorded.run_started_at,
                recorded.run_failed_at,
                step=task.step_slug,
                error=failure.error,
            )
        # A delayed retry sends no NOTIFY (only messages visible now do): let the flow's poller
        # recompute when its next message becomes visible.
        self._on_failed(worker_id)

    @staticmethod
    async def _until_recorded(call: Callable[[], Awaitable[T]], reports: list[_Report]) -> T:
        """Retry ``call`` across lost connections and lost lock races until it goes through."""
        retry = 0
        while True:
            try:
                return await call()
            except Exception as exc:
                sqlstate = None if isinstance(exc, ConnectionLost) else contention(exc)
                if isinstance(exc, ConnectionLost) or sqlstate is not None:
                    delay = _BACKOFF[min(retry, len(_BACKOFF) - 1)]
                    retry += 1
                    for report in reports:
                        telemetry.emit(
                            "task.report_retry",
                            level=logging.WARNING,
                            retry=retry,
                            # A lock error's text goes on with the whole statement.
                            error=str(exc).strip().split("\n", 1)[0] if sqlstate else str(exc),
                            **({"sqlstate": sqlstate} if sqlstate else {}),
                            **report.fields,
                        )
                    await anyio.sleep(delay)
                    continue
                # A missing grant is the role's problem, not the task's: keep the outcome and
                # retry (reports are fenced) until an operator fixes the grant.
                problem = recording_privilege_error(exc)
                if problem is None:
                    raise
                retry += 1
                for report in reports:
                    telemetry.emit(
                        "task.report_privilege_missing",
                        level=logging.ERROR,
                        retry=retry,
                        error=str(problem),
                        **report.fields,
                    )
                await anyio.sleep(_BACKOFF[-1])


def _run_ended(
    event: str,
    flow_slug: str,
    run_id: uuid.UUID,
    started_at: datetime | None,
    ended_at: datetime | None,
    **fields: Any,
) -> None:
    """The run's end, announced by the worker whose report ended it: once per run, unless the
    reply to the report that ended it was lost (then its retry records nothing new)."""
    duration = None
    if started_at is not None and ended_at is not None:
        duration = round((ended_at - started_at).total_seconds() * 1000, 3)
    telemetry.emit(
        event,
        level=logging.WARNING if event == "run.failed" else logging.INFO,
        flow=flow_slug,
        run_id=str(run_id),
        duration_ms=duration,
        **fields,
    )
