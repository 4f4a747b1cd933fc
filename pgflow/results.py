"""What the client returns: runs, step states and tasks as frozen dataclasses.

Statuses are ``str`` enums holding upstream's strings, so ``run.status == "completed"`` and
``run.status is RunStatus.COMPLETED`` both hold. Outputs are the stored JSON values exactly:
``0``, ``false`` and ``""`` stay themselves (the TypeScript client turns them into ``null``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any


class RunStatus(StrEnum):
    """``pgflow.runs.status``."""

    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self is not RunStatus.STARTED


class StepStatus(StrEnum):
    """``pgflow.step_states.status``: ``created`` until its dependencies complete;
    ``skipped`` when its condition was not met or it ran out of attempts with
    ``retries_exhausted="skip"`` (upstream 0.14's status)."""

    CREATED = "created"
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


class TaskStatus(StrEnum):
    """``pgflow.step_tasks.status``: a retried task goes back to ``queued``; the tasks a failed
    or cancelled run leaves unfinished end ``cancelled``, those of a skipped step ``skipped``
    (upstream 0.15.1's statuses)."""

    QUEUED = "queued"
    STARTED = "started"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


class SignalOutcome(StrEnum):
    """What :func:`pgflow.signal` did."""

    COMPLETED = "completed"
    """The step was waiting: it is completed with the signal's output; the run goes on."""
    KEPT = "kept"
    """The step does not wait yet (its dependencies are running): the output is kept and
    completes the step when it starts waiting."""
    ALREADY_SIGNALLED = "already_signalled"
    """A signal for this step was received before (``signalled_at``); the first one wins and
    this one changed nothing."""


@dataclass(frozen=True, slots=True)
class SignalResult:
    """The result of :func:`pgflow.signal`."""

    run_id: uuid.UUID
    step_slug: str
    outcome: SignalOutcome
    signalled_at: datetime
    """When the signal that counts (this one, or the first one) was received."""
    run_status: RunStatus
    step_status: StepStatus
    """As they are right after the signal (``completed`` for a step this signal completed)."""


@dataclass(frozen=True, slots=True)
class Run:
    """One row of ``pgflow.runs``. ``output`` is ``{leaf_step: output, ...}`` once completed
    (a job's is ``{"perform": value}``), ``None`` before."""

    run_id: uuid.UUID
    flow_slug: str
    status: RunStatus
    input: Any
    output: Any
    remaining_steps: int
    started_at: datetime
    completed_at: datetime | None
    failed_at: datetime | None
    cancelled_at: datetime | None = None
    """Set when the run was cancelled (``cancel_run``); its status is then ``failed``."""
    cancel_reason: str | None = None
    restart_of_run_id: uuid.UUID | None = None
    """The run this one retries (``retry_run`` started it)."""
    retried_as_run_id: uuid.UUID | None = None
    """The run that retries this one, once ``retry_run`` was called for it."""
    resumed_count: int = 0
    """How often ``resume_run`` continued this run after a failure or cancellation."""

    @property
    def is_terminal(self) -> bool:
        return self.status.is_terminal

    @property
    def cancelled(self) -> bool:
        return self.cancelled_at is not None

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> Run:
        return cls(
            run_id=uuid.UUID(row["run_id"]),
            flow_slug=row["flow_slug"],
            status=RunStatus(row["status"]),
            input=row["input"],
            output=row["output"],
            remaining_steps=row["remaining_steps"],
            started_at=_timestamp(row["started_at"]),
            completed_at=_optional_timestamp(row.get("completed_at")),
            failed_at=_optional_timestamp(row.get("failed_at")),
            cancelled_at=_optional_timestamp(row.get("cancelled_at")),
            cancel_reason=row.get("cancel_reason"),
            restart_of_run_id=_optional_uuid(row.get("restart_of_run_id")),
            retried_as_run_id=_optional_uuid(row.get("retried_as_run_id")),
            resumed_count=row.get("resumed_count") or 0,
        )


@dataclass(frozen=True, slots=True)
class StepState:
    """One row of ``pgflow.step_states``: a step's progress in one run."""

    run_id: uuid.UUID
    flow_slug: str
    step_slug: str
    status: StepStatus
    remaining_deps: int
    initial_tasks: int | None
    """How many tasks the step has; ``None`` for a map step until its array is known."""
    remaining_tasks: int | None
    error_message: str | None
    created_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> StepState:
        return cls(
            run_id=uuid.UUID(row["run_id"]),
            flow_slug=row["flow_slug"],
            step_slug=row["step_slug"],
            status=StepStatus(row["status"]),
            remaining_deps=row["remaining_deps"],
            initial_tasks=row.get("initial_tasks"),
            remaining_tasks=row.get("remaining_tasks"),
            error_message=row.get("error_message"),
            created_at=_timestamp(row["created_at"]),
            started_at=_optional_timestamp(row.get("started_at")),
            completed_at=_optional_timestamp(row.get("completed_at")),
            failed_at=_optional_timestamp(row.get("failed_at")),
        )


@dataclass(frozen=True, slots=True)
class StepTask:
    """One row of ``pgflow.step_tasks``: a single step's task, or one element of a map step."""

    run_id: uuid.UUID
    flow_slug: str
    step_slug: str
    task_index: int
    status: TaskStatus
    attempts_count: int
    output: Any
    error_message: str | None
    """The last attempt's error; kept after a retry succeeds."""
    message_id: int | None
    last_worker_id: uuid.UUID | None
    queued_at: datetime
    started_at: datetime | None
    completed_at: datetime | None
    failed_at: datetime | None

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> StepTask:
        worker = row.get("last_worker_id")
        return cls(
            run_id=uuid.UUID(row["run_id"]),
            flow_slug=row["flow_slug"],
            step_slug=row["step_slug"],
            task_index=row["task_index"],
            status=TaskStatus(row["status"]),
            attempts_count=row["attempts_count"],
            output=row.get("output"),
            error_message=row.get("error_message"),
            message_id=row.get("message_id"),
            last_worker_id=uuid.UUID(worker) if worker else None,
            queued_at=_timestamp(row["queued_at"]),
            started_at=_optional_timestamp(row.get("started_at")),
            completed_at=_optional_timestamp(row.get("completed_at")),
            failed_at=_optional_timestamp(row.get("failed_at")),
        )


@dataclass(frozen=True, slots=True)
class TaskFailure:
    """One failed attempt of a task, as a Python worker recorded it
    (``pgflow_python.task_failures``). Upstream's ``error_message`` keeps only the last
    attempt's ``Type: message``; this keeps every attempt, with its traceback.

    Attempts failed by TypeScript workers or by the stalled-task sweep have no record.
    """

    run_id: uuid.UUID
    flow_slug: str
    step_slug: str
    task_index: int
    attempt: int
    error_type: str
    """The exception's class name, e.g. ``ValueError`` or ``TimeoutError``."""
    error_message: str
    """``Type: message``, as stored in upstream's ``error_message``."""
    traceback: str | None
    """The formatted traceback (bounded in size); ``None`` when there is none (a timeout)."""
    retryable: bool
    """``False`` when the handler raised :class:`pgflow.errors.NonRetryableError`."""
    retry_at: datetime | None
    """When the retry's message becomes visible; ``None`` when no retry follows."""
    worker_id: uuid.UUID | None
    failed_at: datetime

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> TaskFailure:
        worker = row.get("worker_id")
        return cls(
            run_id=uuid.UUID(row["run_id"]),
            flow_slug=row["flow_slug"],
            step_slug=row["step_slug"],
            task_index=row["task_index"],
            attempt=row["attempt"],
            error_type=row["error_type"],
            error_message=row["error_message"],
            traceback=row.get("traceback"),
            retryable=row["retryable"],
            retry_at=_optional_timestamp(row.get("retry_at")),
            worker_id=uuid.UUID(worker) if worker else None,
            failed_at=_timestamp(row["failed_at"]),
        )


@dataclass(frozen=True, slots=True)
class RunWithStates:
    """A run with its step states, tasks and failed attempts, all read in one statement (one
    snapshot).

    Steps are in declaration order; tasks in step order, then by ``task_index``; failures in
    the order they happened.
    """

    run: Run
    steps: tuple[StepState, ...]
    tasks: tuple[StepTask, ...]
    failures: tuple[TaskFailure, ...] = ()

    def step(self, step_slug: str) -> StepState:
        for state in self.steps:
            if state.step_slug == step_slug:
                return state
        raise KeyError(f"run {self.run.run_id} has no step {step_slug!r}")

    def tasks_of(self, step_slug: str) -> tuple[StepTask, ...]:
        return tuple(task for task in self.tasks if task.step_slug == step_slug)

    def failures_of(self, step_slug: str, task_index: int = 0) -> tuple[TaskFailure, ...]:
        """A task's failed attempts, first attempt first."""
        return tuple(
            f for f in self.failures if f.step_slug == step_slug and f.task_index == task_index
        )


def _timestamp(value: str) -> datetime:
    # to_jsonb renders timestamptz in ISO 8601 with an offset, which fromisoformat reads (3.11+).
    return datetime.fromisoformat(value)


def _optional_timestamp(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _optional_uuid(value: str | None) -> uuid.UUID | None:
    return None if value is None else uuid.UUID(value)
