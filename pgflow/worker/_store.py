"""What the worker asks of the database, as a typed interface.

The worker's loops and built-in services call a :class:`WorkerStore` with domain values and get
domain values back; only the store knows SQL, connections and drivers
(:mod:`pgflow.worker._postgres` is the real one). The worker never asks which store it has: a
subclass of the real store (to inject a fault, say) runs with every check and service, and a
scripted store (the unit tests') answers the same calls without a server.

Errors: a store raises :class:`ConnectionLost` when the database could not be reached or the
connection broke (retrying later is the cure) and lets any other exception through (the
statement itself failed: retrying the same thing will fail the same way).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

# Part of the store interface, defined with the other errors.
from pgflow.errors import ConnectionLost as ConnectionLost  # noqa: PLC0414 (re-export)

if TYPE_CHECKING:
    from pgflow.definition import FlowDefinition
    from pgflow.worker._executor import Failed


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    flow_slug: str
    run_id: uuid.UUID
    step_slug: str
    task_index: int
    message_id: int
    attempt: int
    timeout: int
    """Effective step timeout in seconds (step option, else flow option)."""
    record: Mapping[str, Any]
    """start_tasks' record by column name; its shape depends on the upstream version."""
    trace_context: Mapping[str, str] | None = None
    """The W3C trace context the run was started in, when tracing is on and one was stored."""

    @property
    def key(self) -> TaskKey:
        return TaskKey(self.run_id, self.step_slug, self.task_index)


@dataclass(frozen=True, slots=True)
class TaskKey:
    run_id: uuid.UUID
    step_slug: str
    task_index: int


@dataclass(frozen=True, slots=True)
class Rejection:
    """A task that could not be started; its attempt was failed with ``error``."""

    key: TaskKey
    error: str


@dataclass(frozen=True, slots=True)
class Registration:
    """One ``pgflow.workers`` row: a worker process serves each flow under its own id."""

    worker_id: uuid.UUID
    queue_name: str
    function_name: str


@dataclass(frozen=True, slots=True)
class HeartbeatReply:
    worker_id: uuid.UUID
    deprecated: bool


@dataclass(frozen=True, slots=True)
class RecoveredTask:
    run_id: uuid.UUID
    step_slug: str
    task_index: int
    action: str
    """``requeued`` (back in the queue) or ``failed`` (reported through upstream's fail_task)."""


@dataclass(frozen=True, slots=True)
class DeadlineAction:
    """What the deadline sweep did (extension/0071_deadlines.sql)."""

    kind: str
    """``wait_timeout`` or ``run_deadline``."""
    run_id: uuid.UUID
    step_slug: str | None
    action: str
    """``failed``/``skipped``/``abandoned`` (a wait), ``cancelled``/``ended`` (a run)."""
    waiting_since: datetime | None = None
    """A wait's: since when it waited."""
    waited_ms: float | None = None
    """A wait's: how long it waited, up to this sweep."""


@dataclass(frozen=True, slots=True)
class EndedRun:
    """A run that a report ended (its status changed in the report's transaction)."""

    run_id: uuid.UUID
    flow_slug: str
    status: str
    """``completed`` or ``failed``."""
    started_at: datetime
    ended_at: datetime


@dataclass(frozen=True, slots=True)
class CompletionRecorded:
    positions: set[int]
    """0-based positions of the tasks recorded (those ``worker_id`` still held)."""
    ended_runs: tuple[EndedRun, ...] = ()


@dataclass(frozen=True, slots=True)
class FailureRecorded:
    """What recording a failed attempt did (``pgflow_python.fail_task``)."""

    attempt: int
    retry_at: datetime | None
    """When the retry becomes visible; None when no retry follows."""
    run_failed: bool
    """This report failed the run (it was not failed before)."""
    run_started_at: datetime | None = None
    run_failed_at: datetime | None = None
    step_skipped: bool = False
    """The step was skipped instead of failing (``retries_exhausted``), by this report."""
    run_completed_at: datetime | None = None
    """Set when that skip left nothing to run: this report completed the run."""


@dataclass(frozen=True, slots=True)
class FiredSchedule:
    """A tick a scheduler pass fired, committed with the run it started."""

    schedule_name: str
    flow_slug: str
    fire_time: datetime
    run_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class SchedulerPass:
    """What one pass of the scheduler did, and when the next is worth making."""

    fired: tuple[FiredSchedule, ...]
    claimed: int
    """How many due schedules the pass locked (a schedule held by another worker is not)."""
    more_due: bool
    """The pass fired as many schedules as it may: more may be due right now."""
    seconds_until_due: float | None
    """Until the earliest active schedule is due (None: no active schedule, or ``more_due``)."""


class WorkerStore(Protocol):
    """The database operations of a serving worker.

    Async methods are awaited from the event loop. ``heartbeat`` and ``wait_for_wakeups`` block:
    they are called from threads of their own, so they keep working while the loop is busy.
    """

    async def check_flows(
        self, definitions: Sequence[FlowDefinition], *, compile_missing: bool
    ) -> None:
        """Start-up checks: the schema is usable, each flow is in the database with its class's
        shape (``compile_missing``: register the missing ones), the role has the privileges
        serving needs. Raises what the worker must not serve through."""

    async def register(self, registrations: Sequence[Registration]) -> None:
        """Create or revive the workers' rows and the wake-up triggers of their queues."""

    async def claim(
        self, flow_slug: str, worker_id: uuid.UUID, *, quantity: int, reservation: int, margin: int
    ) -> list[ClaimedTask]:
        """Read up to ``quantity`` visible messages, start their tasks for ``worker_id`` and
        keep each invisible for its step's timeout plus ``margin`` seconds."""

    async def claim_isolated(
        self, flow_slug: str, worker_id: uuid.UUID, *, quantity: int, reservation: int, margin: int
    ) -> tuple[list[ClaimedTask], list[Rejection]]:
        """:meth:`claim` one message at a time, after a claim failed for a reason other than
        a lost connection: a task that cannot be started is failed (rejected), the others are
        claimed."""

    async def release_unstarted(
        self, worker_id: uuid.UUID, running: Sequence[TaskKey]
    ) -> list[TaskKey]:
        """Give back, without spending an attempt, the tasks the database says ``worker_id``
        started but that are not in ``running`` (a claim whose reply was lost)."""

    async def next_visible_at(self, flow_slug: str) -> datetime | None:
        """When the flow's next invisible message becomes visible (None: no such message)."""

    async def complete(
        self, worker_id: uuid.UUID, tasks: Sequence[ClaimedTask], outputs: Sequence[str]
    ) -> CompletionRecorded:
        """Record outputs (JSON texts) in one transaction; returns the positions recorded,
        i.e. of the tasks ``worker_id`` still held, and the runs the batch ended."""

    async def fail(
        self, worker_id: uuid.UUID, task: ClaimedTask, failure: Failed
    ) -> FailureRecorded | None:
        """Record a failed attempt, with its traceback, if ``worker_id`` still holds the task
        (None: it does not). A non-retryable failure fails the step whatever attempts remain."""

    def heartbeat(self, worker_ids: Sequence[uuid.UUID]) -> list[HeartbeatReply]:
        """Blocking. Mark the workers alive; no reply for a row that no longer exists."""

    async def recover(
        self, *, heartbeat_timeout: int, max_requeues: int, sweeper_ids: Sequence[uuid.UUID]
    ) -> list[RecoveredTask]:
        """Run the stalled-task sweep (one caller at a time across workers). The sweeper's
        own rows are marked alive in the same transaction, so its own tasks are never taken."""

    async def mark_stopped(self, worker_ids: Sequence[uuid.UUID]) -> None:
        """Record that the workers stopped (their rows stay, deprecated)."""

    async def run_input(self, run_id: uuid.UUID) -> Any:
        """The run's flow input (None if the run does not exist)."""

    async def cancelled_runs(self, run_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Those of ``run_ids`` that were cancelled (``pgflow.operations.cancel_run``)."""

    async def refresh_statistics(self, queue_names: Sequence[str]) -> list[str]:
        """Analyze pgflow's tables and these queues where autovacuum does not (one worker at a
        time); the tables analyzed."""

    async def enforce_deadlines(self, limit: int) -> list[DeadlineAction]:
        """Time out waits and cancel runs whose deadline passed, at most ``limit`` of each (one
        worker at a time across workers); what was done."""

    async def fire_schedules(self, *, fired_by: str, limit: int) -> SchedulerPass:
        """Fire up to ``limit`` due schedules that no other scheduler holds, each tick exactly
        once across workers; a schedule whose run cannot start records its error instead."""

    async def prune_schedule_fires(self, keep: timedelta) -> int:
        """Forget fire records older than ``keep`` (each schedule's latest stays); how many."""

    @property
    def listening(self) -> bool:
        """Whether :meth:`wait_for_wakeups` hears anything (False: through a transaction pooler
        with no direct URL to LISTEN on, the pollers' timer alone wakes them)."""

    def wait_for_wakeups(self, stop: threading.Event, wake: Callable[[str], None]) -> None:
        """Blocking. Call ``wake(queue_name)`` for each wake-up notification until ``stop`` is
        set; survive lost connections by reconnecting. Returns soon after ``stop`` is set."""

    async def close(self) -> None:
        """Close every connection; the store may be used again afterwards (it reconnects)."""
