"""An in-memory WorkerStore for unit tests of the worker's loops: tasks are queued per flow, every
call is recorded, and a test can make calls wait or fail to script stops, crashes and outages."""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

import anyio

from pgflow.definition import FlowDefinition
from pgflow.errors import ConnectionLost
from pgflow.worker._executor import Failed
from pgflow.worker._store import (
    ClaimedTask,
    CompletionRecorded,
    DeadlineAction,
    FailureRecorded,
    HeartbeatReply,
    RecoveredTask,
    Registration,
    Rejection,
    SchedulerPass,
    TaskKey,
)


def task(flow_slug: str, step_slug: str, *, flow_input: Any = None, index: int = 0) -> ClaimedTask:
    run_id = uuid.uuid4()
    record = {
        "flow_slug": flow_slug,
        "run_id": str(run_id),
        "step_slug": step_slug,
        "task_index": index,
        "msg_id": 1,
        "input": {"run": flow_input},
    }
    return ClaimedTask(flow_slug, run_id, step_slug, index, 1, 1, 60, record)


class ScriptedStore:
    def __init__(self) -> None:
        self.queued: dict[str, list[ClaimedTask]] = defaultdict(list)
        self.calls: list[str] = []
        self.registered: list[Registration] = []
        self.completed: dict[uuid.UUID, Any] = {}
        self.failed: dict[uuid.UUID, str] = {}
        self.stopped: list[uuid.UUID] = []
        self.closed = 0
        self.listening_thread = threading.Event()
        """Set while a wait_for_wakeups thread runs."""
        self.listening = True
        self.deprecated = False
        self.cancelled: set[uuid.UUID] = set()
        """Runs cancelled_runs reports as cancelled."""
        self.claim_error: Callable[[], Exception | None] = lambda: None
        self.report_error: Callable[[], Exception | None] = lambda: None

    def add(self, *tasks: ClaimedTask) -> None:
        for claimed in tasks:
            self.queued[claimed.flow_slug].append(claimed)

    async def check_flows(
        self, definitions: Sequence[FlowDefinition], *, compile_missing: bool
    ) -> None:
        self.calls.append("check_flows")

    async def refresh_statistics(self, queue_names: Sequence[str]) -> list[str]:
        return []

    async def enforce_deadlines(self, limit: int) -> list[DeadlineAction]:
        return []

    async def fire_schedules(self, *, fired_by: str, limit: int) -> SchedulerPass:
        return SchedulerPass((), claimed=0, more_due=False, seconds_until_due=None)

    async def prune_schedule_fires(self, keep: timedelta) -> int:
        return 0

    async def register(self, registrations: Sequence[Registration]) -> None:
        self.calls.append("register")
        self.registered += registrations

    async def claim(
        self, flow_slug: str, worker_id: uuid.UUID, *, quantity: int, reservation: int, margin: int
    ) -> list[ClaimedTask]:
        self.calls.append("claim")
        await anyio.lowlevel.checkpoint()
        if error := self.claim_error():
            raise error
        taken = self.queued[flow_slug][:quantity]
        del self.queued[flow_slug][:quantity]
        return taken

    async def claim_isolated(
        self, flow_slug: str, worker_id: uuid.UUID, *, quantity: int, reservation: int, margin: int
    ) -> tuple[list[ClaimedTask], list[Rejection]]:
        self.calls.append("claim_isolated")
        tasks = await self.claim(
            flow_slug, worker_id, quantity=quantity, reservation=reservation, margin=margin
        )
        return tasks, []

    async def release_unstarted(
        self, worker_id: uuid.UUID, running: Sequence[TaskKey]
    ) -> list[TaskKey]:
        self.calls.append("release_unstarted")
        return []

    async def next_visible_at(self, flow_slug: str) -> datetime | None:
        return None

    async def complete(
        self, worker_id: uuid.UUID, tasks: Sequence[ClaimedTask], outputs: Sequence[str]
    ) -> CompletionRecorded:
        self.calls.append("complete")
        if error := self.report_error():
            raise error
        for claimed, output in zip(tasks, outputs, strict=True):
            self.completed[claimed.run_id] = output
        return CompletionRecorded(set(range(len(tasks))))

    async def fail(
        self, worker_id: uuid.UUID, task: ClaimedTask, failure: Failed
    ) -> FailureRecorded | None:
        self.calls.append("fail")
        if problem := self.report_error():
            raise problem
        self.failed[task.run_id] = failure.error
        return FailureRecorded(attempt=task.attempt, retry_at=None, run_failed=False)

    def heartbeat(self, worker_ids: Sequence[uuid.UUID]) -> list[HeartbeatReply]:
        return [HeartbeatReply(worker_id, self.deprecated) for worker_id in worker_ids]

    async def recover(
        self, *, heartbeat_timeout: int, max_requeues: int, sweeper_ids: Sequence[uuid.UUID]
    ) -> list[RecoveredTask]:
        return []

    async def mark_stopped(self, worker_ids: Sequence[uuid.UUID]) -> None:
        self.calls.append("mark_stopped")
        self.stopped += worker_ids

    async def run_input(self, run_id: uuid.UUID) -> Any:
        return None

    async def cancelled_runs(self, run_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        return self.cancelled & set(run_ids)

    def wait_for_wakeups(self, stop: threading.Event, wake: Callable[[str], None]) -> None:
        self.listening_thread.set()
        try:
            stop.wait()
        finally:
            self.listening_thread.clear()

    async def close(self) -> None:
        self.calls.append("close")
        self.closed += 1


def lost() -> Exception:
    return ConnectionLost("server closed the connection unexpectedly")
