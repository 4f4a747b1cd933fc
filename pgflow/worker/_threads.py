"""Threads for sync handlers: reused, daemonic, and bounded even when handlers outlive timeouts.

Python cannot stop a thread. A sync handler past its timeout is abandoned: its attempt is
reported as timed out at once, but its thread runs on until the handler returns. Such a thread
keeps its task's concurrency slot until then, so a process never runs more threads than
``concurrency`` (anyio's own worker threads are released on abandon, so each timeout used to add
one). The threads are daemons: a stuck handler does not keep the process alive after ``serve()``
has returned, so one SIGTERM is enough to exit.

A handler abandoned *before* its timeout (its run was cancelled, and it is expected to see
``ctx.cancelled`` and return) is not stuck: it counts as stuck only if it still runs once its
timeout has passed. Only threads past their timeout can make the process give up.
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
        self,
        function: Callable[[], Any],
        *,
        keep_slot: Callable[[], Callable[[], None]],
        deadline: float,
    ) -> Any:
        """``function()`` in a thread. When cancelled (the timeout at ``deadline``, on anyio's
        clock, or the run's cancellation), return at once and let the thread finish on its own;
        ``keep_slot()`` holds the caller's slot until it does."""
        jobs = self._idle.pop() if self._idle else self._start()
        done = anyio.Event()
        result: list[Any] = []
        error: list[BaseException] = []
        abandoned: list[Callable[[], None]] = []
        counted_stuck: list[bool] = []
        timer: list[threading.Timer] = []

        def finished() -> None:  # on the event loop
            self._idle.append(jobs)
            if timer:
                timer[0].cancel()
            if counted_stuck:
                self.stuck -= 1
            if abandoned:
                abandoned[0]()
            done.set()

        def now_stuck() -> None:  # on the event loop, once the handler is past its timeout
            if done.is_set() or counted_stuck:
                return
            counted_stuck.append(True)
            self.stuck += 1
            if self.stuck >= self._size:
                self._on_all_stuck(self.stuck)

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
                left = deadline - anyio.current_time()
                if left <= 0:
                    now_stuck()
                else:  # the run was cancelled: the handler has until its timeout to return
                    timer.append(threading.Timer(left, self._on_loop, (now_stuck,)))
                    timer[0].daemon = True
                    timer[0].start()
            raise
        if error:
            raise error[0]
        return result[0]

    def _on_loop(self, function: Callable[[], None]) -> None:
        with contextlib.suppress(anyio.RunFinishedError):
            anyio.from_thread.run_sync(function, token=self.event_loop)

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
