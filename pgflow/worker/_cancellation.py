"""Telling running handlers that their run was cancelled (``pgflow.operations.cancel_run``).

The serving session keeps a :class:`RunCancellations`: every running task is tracked under its
run with a cancel scope and a flag. The cancel watcher, a background service
(:class:`~pgflow.worker._services.CancelWatcher`), asks the store every
``cancel_check_interval`` seconds which of the runs in flight were cancelled, and cancels their
tasks: an async handler's cancel scope is cancelled (it stops at its next await); a sync handler
cannot be stopped, so its thread is abandoned and ``ctx.cancelled`` turns true for it to poll.
Either way nothing is reported for the task: the run is failed, so upstream would ignore the
report anyway, and a late result must not look like work done.

Polling, not NOTIFY: it works where ``realtime.send`` is Supabase's, costs one primary-key
lookup per interval only while tasks run, and keeps within about a second.
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict

import anyio


class TaskCancellation:
    """One running task's cancel scope (for the handler's await) and flag (for ``ctx``)."""

    __slots__ = ("flag", "run_id", "scope")

    def __init__(self, run_id: uuid.UUID) -> None:
        self.run_id = run_id
        self.scope = anyio.CancelScope()
        self.flag = threading.Event()

    @property
    def requested(self) -> bool:
        return self.flag.is_set()

    def cancel(self) -> None:
        self.flag.set()
        self.scope.cancel()


class RunCancellations:
    """The tasks running in this process, by run (event loop only)."""

    def __init__(self) -> None:
        self._by_run: defaultdict[uuid.UUID, set[TaskCancellation]] = defaultdict(set)

    def add(self, run_id: uuid.UUID) -> TaskCancellation:
        cancellation = TaskCancellation(run_id)
        self._by_run[run_id].add(cancellation)
        return cancellation

    def discard(self, cancellation: TaskCancellation) -> None:
        tasks = self._by_run.get(cancellation.run_id)
        if tasks is not None:
            tasks.discard(cancellation)
            if not tasks:
                del self._by_run[cancellation.run_id]

    def runs(self) -> list[uuid.UUID]:
        return list(self._by_run)

    def cancel_run(self, run_id: uuid.UUID) -> int:
        """Cancel the run's running tasks; how many were not cancelled before."""
        fresh = [task for task in self._by_run.get(run_id, ()) if not task.requested]
        for task in fresh:
            task.cancel()
        return len(fresh)
