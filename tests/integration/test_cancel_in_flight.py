"""A routine ``cancel_run`` never takes a worker down (issue "Robustness, round two", N1).

Handlers that watch ``ctx.cancelled`` (sync) or are cancelled at their next await (async) end
soon after the cancel; the worker stays up, frees their slots and runs the next run. Checked
with the run's tasks filling every slot (concurrency below the task count) and leaving slots
free (above it), against real PostgreSQL.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any, ClassVar

import anyio
import anyio.to_thread
import pytest
from sqlalchemy.engine import Engine

from pgflow import Context, Flow, map_step, start_flow, step
from pgflow.errors import WorkerCrashedError
from pgflow.operations import cancel_run
from tests.helpers.database import register_flows
from tests.helpers.waiting import wait_until
from tests.helpers.workers import EventLog, running_worker, wait_until_finished

pytestmark = pytest.mark.anyio

ELEMENTS = 4


class Seen:
    lock = threading.Lock()
    started: ClassVar[list[int]] = []
    returned: ClassVar[list[int]] = []

    @classmethod
    def reset(cls) -> None:
        cls.started.clear()
        cls.returned.clear()

    @classmethod
    def add(cls, into: list[int], item: int) -> None:
        with cls.lock:
            into.append(item)


class PollsSync(Flow, slug="polls_sync", max_attempts=1, timeout=20):
    @map_step
    def wait(self, item: int, ctx: Context) -> None:
        Seen.add(Seen.started, item)
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if ctx.cancelled:
                    return
                time.sleep(0.1)
            return
        finally:
            Seen.add(Seen.returned, item)


class PollsAsync(Flow, slug="polls_async", max_attempts=1, timeout=20):
    @map_step
    async def wait(self, item: int, ctx: Context) -> None:
        Seen.add(Seen.started, item)
        try:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                if ctx.cancelled:
                    return
                await anyio.sleep(0.1)
            return
        finally:
            Seen.add(Seen.returned, item)


class Quick(Flow, slug="quick_after_cancel", max_attempts=1):
    @step
    def only(self, input: int) -> int:
        return input + 1


@pytest.mark.parametrize("flow", [PollsSync, PollsAsync], ids=["sync", "async"])
@pytest.mark.parametrize("concurrency", [2, 6], ids=["below-task-count", "above-task-count"])
async def test_cancelling_a_run_whose_handlers_hold_the_slots_leaves_the_worker_serving(
    pgflow_engine: Engine, flow: type[Flow], concurrency: int
) -> None:
    register_flows(pgflow_engine, flow, Quick)
    Seen.reset()
    with pgflow_engine.begin() as connection:
        cancelled = start_flow(connection, flow, list(range(ELEMENTS)))
    events = EventLog()
    try:
        async with running_worker(
            pgflow_engine, flow, Quick, concurrency=concurrency, cancel_check_interval=0.2
        ):
            running = min(concurrency, ELEMENTS)
            await anyio.to_thread.run_sync(
                lambda: wait_until(
                    lambda: len(Seen.started) >= running, what=f"{running} handlers to start"
                )
            )
            outcome = await anyio.to_thread.run_sync(
                lambda: cancel_run(pgflow_engine, cancelled, reason="routine")
            )
            assert outcome.cancelled
            await anyio.to_thread.run_sync(
                lambda: wait_until(
                    lambda: len(Seen.returned) >= len(Seen.started),
                    what="the cancelled handlers to return",
                )
            )
            # Still serving, with its slots back: the next run completes.
            with pgflow_engine.begin() as connection:
                after: uuid.UUID = start_flow(connection, Quick, 1)
            run: dict[str, Any] = await wait_until_finished(pgflow_engine, after)
            assert (run["status"], run["output"]) == ("completed", {"only": 2})
    finally:
        events.close()
    assert not events.named("worker.threads_stuck")
    assert not events.named("worker.crashed")
    assert events.named("run.cancelled_in_flight")
    assert sorted(Seen.started) == sorted(Seen.returned)
    assert len(Seen.started) == running


RELEASED = threading.Event()


class IgnoresCancel(Flow, slug="ignores_cancel", max_attempts=1, timeout=3):
    @step
    def hang(self, input: int, ctx: Context) -> None:
        Seen.add(Seen.started, input)
        stop = time.monotonic() + 30
        while time.monotonic() < stop and not RELEASED.is_set():
            time.sleep(0.05)  # never looks at ctx.cancelled


async def test_a_cancelled_sync_handler_still_running_past_its_timeout_counts_as_stuck(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, IgnoresCancel)
    Seen.reset()
    RELEASED.clear()
    with pgflow_engine.begin() as connection:
        run_id = start_flow(connection, IgnoresCancel, 1)
    events = EventLog()
    try:
        with pytest.raises(BaseExceptionGroup) as crash:  # noqa: PT012
            async with running_worker(
                pgflow_engine, IgnoresCancel, concurrency=1, cancel_check_interval=0.2
            ):
                await anyio.to_thread.run_sync(
                    lambda: wait_until(lambda: Seen.started, what="the handler to start")
                )
                await anyio.to_thread.run_sync(lambda: cancel_run(pgflow_engine, run_id))
                with anyio.fail_after(20):
                    await anyio.sleep_forever()
    finally:
        RELEASED.set()
        events.close()
    assert crash.group_contains(WorkerCrashedError, match="past their timeout", depth=None)
    [(_, cancelled_at)] = events.named("run.cancelled_in_flight")
    [(stuck, stuck_at)] = events.named("worker.threads_stuck")
    assert stuck["threads"] == 1
    # Not at the cancel: only once the handler's 3 s timeout had passed.
    assert stuck_at - cancelled_at > 1.5
