"""Threads for sync handlers: reused, daemonic, and bounded even when handlers outlive timeouts.

Python cannot stop a thread. A sync handler past its timeout is abandoned: its attempt is
reported as timed out at once, but its thread runs on until the handler returns. Such a thread
keeps its task's concurrency slot until then, so a process never runs more threads than
``concurrency`` (anyio's own worker threads are released on abandon, so each timeout used to add
one). The threads are daemons: a stuck handler does not keep the process alive after ``serve()``
has returned, so one SIGTERM is enough to exit.
"""

from __future__ import annotations

import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel

Job = Callable[[], None]


class HandlerThreads:
    def __init__(self, size: int, *, on_all_stuck: Callable[[int], None]) -> None:
        self._size = size
        self._idle: list[queue.SimpleQueue[Job | None]] = []
        self._started = 0
        self.stuck = 0
        """Threads still running a handler whose attempt was already reported as timed out."""
        self._on_all_stuck = on_all_stuck
        self.event_loop = anyio.lowlevel.current_token()

    async def run(
        self, function: Callable[[], Any], *, keep_slot: Callable[[], Callable[[], None]]
    ) -> Any:
        """``function()`` in a thread. When cancelled (the timeout), return at once and let the
        thread finish on its own; ``keep_slot()`` holds the caller's slot until it does."""
        jobs = self._idle.pop() if self._idle else self._start()
        done = anyio.Event()
        result: list[Any] = []
        error: list[BaseException] = []
        abandoned: list[Callable[[], None]] = []

        def finished() -> None:  # on the event loop
            self._idle.append(jobs)
            if abandoned:
                self.stuck -= 1
                abandoned[0]()
            done.set()

        # The caller's context variables (e.g. the current tracing span) go with the call.
        context = contextvars.copy_context()

        def job() -> None:  # in the thread
            try:
                result.append(context.run(function))
            except BaseException as exc:
                error.append(exc)
            finally:
                with contextlib.suppress(anyio.RunFinishedError):
                    anyio.from_thread.run_sync(finished, token=self.event_loop)

        jobs.put(job)
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class():
            if not done.is_set():
                abandoned.append(keep_slot())
                self.stuck += 1
                if self.stuck >= self._size:
                    self._on_all_stuck(self.stuck)
            raise
        if error:
            raise error[0]
        return result[0]

    def _start(self) -> queue.SimpleQueue[Job | None]:
        jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()

        def serve_jobs() -> None:
            while (job := jobs.get()) is not None:
                job()

        self._started += 1
        threading.Thread(
            target=serve_jobs, name=f"pgflow-handler-{self._started}", daemon=True
        ).start()
        return jobs

    def close(self) -> None:
        """Let idle threads end (busy ones end after their handler, as daemons)."""
        for jobs in self._idle:
            jobs.put(None)
        self._idle.clear()
