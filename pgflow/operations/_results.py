"""What the operations return: frozen dataclasses, outcomes as ``str`` enums."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from pgflow._durations import FailedSpan, active_duration, time_failed
from pgflow.results import Run, RunStatus, StepStatus, TaskFailure


class CancelOutcome(StrEnum):
    CANCELLED = "cancelled"
    """This call cancelled the run."""
    ALREADY_CANCELLED = "already_cancelled"
    """The run was cancelled before; nothing changed."""
    NOT_RUNNING = "not_running"
    """The run had already completed or failed; nothing changed."""


class RetryOutcome(StrEnum):
    RETRIED = "retried"
    """A new run was started; ``new_run_id`` names it."""
    ALREADY_RETRIED = "already_retried"
    """The run was retried before; ``new_run_id`` names that retry (retry it to try again)."""
    NOT_FAILED = "not_failed"
    """Only a failed or cancelled run can be retried; nothing changed."""


class ResumeOutcome(StrEnum):
    RESUMED = "resumed"
    """The run is started again; its unfinished tasks are back in the queue."""
    NOT_FAILED = "not_failed"
    """Only a failed or cancelled run can be resumed; nothing changed."""


@dataclass(frozen=True, slots=True)
class CancelResult:
    run_id: uuid.UUID
    outcome: CancelOutcome
    status: RunStatus
    """The run's status after the call (``failed`` for a cancelled run)."""
    cancelled_at: datetime | None
    tasks_cancelled: int

    @property
    def cancelled(self) -> bool:
        """The run is cancelled now (by this call or an earlier one)."""
        return self.outcome is not CancelOutcome.NOT_RUNNING


@dataclass(frozen=True, slots=True)
class RetryResult:
    run_id: uuid.UUID
    """The run that was retried."""
    outcome: RetryOutcome
    status: RunStatus
    """The retried run's status."""
    new_run_id: uuid.UUID | None
    """The retry (its ``restart_of_run_id`` is ``run_id``); ``None`` when refused."""

    @property
    def retried(self) -> bool:
        return self.new_run_id is not None


@dataclass(frozen=True, slots=True)
class ResumeResult:
    run_id: uuid.UUID
    outcome: ResumeOutcome
    status: RunStatus
    """The run's status after the call: ``started``, or ``completed`` if nothing was left."""
    tasks_requeued: int

    @property
    def resumed(self) -> bool:
        return self.outcome is ResumeOutcome.RESUMED


@dataclass(frozen=True, slots=True)
class PruneReport:
    """What :func:`prune` deleted (or, with ``dry_run``, would delete)."""

    cutoff: datetime
    """Runs that finished before this time were selected; workers silent since before it."""
    dry_run: bool
    workers_cutoff: datetime | None = None
    """Worker rows silent since before this time were selected: the cutoff, but at least an
    hour ago, so that no live worker loses its row."""
    runs: int = 0
    step_states: int = 0
    step_tasks: int = 0
    messages: int = 0
    """pgmq messages of the pruned runs, from the archive (``pgmq.a_<flow>``) and the queue."""
    extension_rows: int = 0
    """Rows of pgflow_python tables keyed by the pruned runs (cancellations, keys, lineage...)."""
    workers: int = 0
    batches: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff.isoformat(),
            "workers_cutoff": None
            if self.workers_cutoff is None
            else self.workers_cutoff.isoformat(),
            "dry_run": self.dry_run,
            "runs": self.runs,
            "step_states": self.step_states,
            "step_tasks": self.step_tasks,
            "messages": self.messages,
            "extension_rows": self.extension_rows,
            "workers": self.workers,
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class RunSummary:
    """A run as listed: no input or output."""

    run_id: uuid.UUID
    flow_slug: str
    status: RunStatus
    remaining_steps: int
    started_at: datetime
    completed_at: datetime | None
    failed_at: datetime | None
    cancelled_at: datetime | None
    cancel_reason: str | None
    restart_of_run_id: uuid.UUID | None
    schedule_name: str | None = None
    """The schedule that started this run (docs/schedules.md), if one did."""
    scheduled_for: datetime | None = None
    """The schedule's tick this run is for (when it was triggered, for a manual trigger)."""

    @property
    def cancelled(self) -> bool:
        return self.cancelled_at is not None

    failed_spans: tuple[FailedSpan, ...] = ()
    """``(failed_at, resumed_at)`` of each resume: when the run sat failed or cancelled."""

    @property
    def duration(self) -> timedelta | None:
        """Start to end, without the time the run sat failed before a resume."""
        return active_duration(
            self.failed_spans, self.started_at, self.completed_at or self.failed_at
        )

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> RunSummary:
        return cls(
            run_id=row["run_id"],
            flow_slug=row["flow_slug"],
            status=RunStatus(row["status"]),
            remaining_steps=row["remaining_steps"],
            started_at=row["started_at"],
            completed_at=row["completed_at"],
            failed_at=row["failed_at"],
            cancelled_at=row["cancelled_at"],
            cancel_reason=row["cancel_reason"],
            restart_of_run_id=row["restart_of_run_id"],
            schedule_name=row.get("schedule_name"),
            scheduled_for=row.get("scheduled_for"),
            failed_spans=tuple(
                zip(row.get("resumes_failed_at") or (), row.get("resumed_at") or (), strict=True)
            ),
        )


@dataclass(frozen=True, slots=True)
class StepSummary:
    """One step of a run with its tasks summed up."""

    step_slug: str
    step_type: str
    status: StepStatus
    depends_on: tuple[str, ...]
    remaining_deps: int
    initial_tasks: int | None
    remaining_tasks: int | None
    tasks: int
    completed_tasks: int
    failed_tasks: int
    attempts: int
    """Attempts of all its tasks together."""
    output_bytes: int
    """Size of the stored outputs as JSON text."""
    error_message: str | None
    started_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None
    skip_reason: str | None = None
    """Why a ``skipped`` step was skipped: ``condition_unmet``, ``handler_failed`` (its last
    attempt failed, ``retries_exhausted="skip"``), ``dependency_skipped`` (skip-cascade) or
    ``wait_timeout`` (a wait step's timeout passed, ``on_timeout="skip"``)."""
    waits_for: str | None = None
    """``"signal"`` for a wait step (docs/waiting.md); None for a step that runs a handler."""
    waiting_since: datetime | None = None
    """Set while the step waits: when it started waiting."""
    waiting_until: datetime | None = None
    """While it waits: when its timeout passes (None: it waits for ever)."""
    signalled_at: datetime | None = None
    """When its signal was received (also a signal kept before the step waited)."""

    @property
    def waiting(self) -> bool:
        return self.waiting_since is not None

    @property
    def duration(self) -> timedelta | None:
        ended = self.completed_at or self.failed_at
        if ended is None or self.started_at is None:
            return None
        return ended - self.started_at

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> StepSummary:
        return cls(
            step_slug=row["step_slug"],
            step_type=row["step_type"],
            status=StepStatus(row["status"]),
            depends_on=tuple(row["depends_on"]),
            remaining_deps=row["remaining_deps"],
            initial_tasks=row["initial_tasks"],
            remaining_tasks=row["remaining_tasks"],
            tasks=row["tasks"],
            completed_tasks=row["completed_tasks"],
            failed_tasks=row["failed_tasks"],
            attempts=row["attempts"],
            output_bytes=row["output_bytes"],
            error_message=row["error_message"],
            started_at=row["started_at"],
            completed_at=row["completed_at"],
            failed_at=row["failed_at"],
            skip_reason=row.get("skip_reason"),
            waits_for=row.get("waits_for"),
            waiting_since=row.get("waiting_since"),
            waiting_until=row.get("waiting_until"),
            signalled_at=row.get("signalled_at"),
        )


@dataclass(frozen=True, slots=True)
class SubflowLink:
    """A run's parent, or one of its children: a run a subflow step started (docs/waiting.md)."""

    run_id: uuid.UUID | None
    """The other run; None for a child whose start is still pending."""
    flow_slug: str
    step_slug: str
    """The parent's subflow step."""
    task_index: int
    status: str | None
    """The other run's status (None: not started, or pruned)."""
    outcome: str | None
    """How the child's end reached the parent: ``completed``, ``failed``, ``cancelled`` (the
    parent ended first), ``abandoned`` (the parent ended before it started); None: going."""
    started_at: datetime | None


@dataclass(frozen=True, slots=True)
class ResumeRecord:
    resumed_at: datetime
    failed_at: datetime | None
    was_cancelled: bool
    reason: str | None
    """The cancel reason, or the error of the failed step."""
    tasks_requeued: int


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """One ``pgflow.workers`` row: one per flow per worker start (Python or TypeScript)."""

    worker_id: uuid.UUID
    queue_name: str
    function_name: str
    state: str
    """``alive``, ``draining`` (asked to stop, still beating), ``stopped`` or ``dead``."""
    started_at: datetime
    last_heartbeat_at: datetime
    deprecated_at: datetime | None
    tasks_started: int

    @classmethod
    def from_row(cls, row: Mapping[Any, Any]) -> WorkerInfo:
        return cls(
            worker_id=row["worker_id"],
            queue_name=row["queue_name"],
            function_name=row["function_name"],
            state=row["state"],
            started_at=row["started_at"],
            last_heartbeat_at=row["last_heartbeat_at"],
            deprecated_at=row["deprecated_at"],
            tasks_started=row["tasks_started"],
        )


@dataclass(frozen=True, slots=True)
class RunDetails:
    """A run with its steps summed up, its resumes and its recorded failed attempts (with
    tracebacks): what ``pgflow runs show`` prints."""

    run: Run
    steps: tuple[StepSummary, ...]
    resumes: tuple[ResumeRecord, ...]
    failures: tuple[TaskFailure, ...] = ()
    deadline_at: datetime | None = None
    """When the run is cancelled if still going (``start_flow(deadline=...)`` or the flow's
    ``run_timeout``); None: no deadline."""
    deadline_source: str | None = None
    """``start_flow`` or ``run_timeout``."""
    parent: SubflowLink | None = None
    """The run whose subflow step started this run (its ``parent_run_id``); None: none."""
    children: tuple[SubflowLink, ...] = ()
    """The runs this run's subflow steps started (or will start), by step and task index."""

    def time_failed(self, start: datetime | None, end: datetime | None) -> timedelta:
        """How much of ``start`` to ``end`` the run sat failed or cancelled before a resume."""
        return time_failed(self._failed_spans(), start, end)

    def active_duration(self, start: datetime | None, end: datetime | None) -> timedelta | None:
        """``end - start`` without the time the run sat failed or cancelled before a resume
        (a step or run of a resumed run); None while ``end`` is unknown."""
        return active_duration(self._failed_spans(), start, end)

    def _failed_spans(self) -> list[FailedSpan]:
        return [(resume.failed_at, resume.resumed_at) for resume in self.resumes]
