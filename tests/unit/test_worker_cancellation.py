"""A cancelled run's running handlers are told, against a scripted store: an async handler is
cancelled, a sync handler sees ``ctx.cancelled``; neither result is reported."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import anyio
import pytest

from pgflow import Context, Flow, step
from pgflow.worker import Worker, WorkerOptions
from tests.helpers.scripted_store import ScriptedStore, task
from tests.helpers.workers import EventLog

pytestmark = pytest.mark.anyio
NOWHERE = "postgresql://nobody@127.0.0.1:1/none"


class Seen:
    started = threading.Event()
    cancelled = threading.Event()
    finished = threading.Event()

    @classmethod
    def reset(cls) -> None:
        for event in (cls.started, cls.cancelled, cls.finished):
            event.clear()


class Sleeper(Flow, slug="sleeper"):
    @step
    async def nap(self, input: Any) -> str:
        Seen.started.set()
        try:
            await anyio.sleep(60)
        except anyio.get_cancelled_exc_class():
            Seen.cancelled.set()
            raise
        return "woke up"


class Poller(Flow, slug="poller"):
    @step
    def spin(self, input: Any, ctx: Context) -> str:
        Seen.started.set()
        deadline = time.monotonic() + 30
        while not ctx.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)
        if ctx.cancelled:
            Seen.cancelled.set()
        Seen.finished.set()
        return "late result"


async def serve_until_cancelled(flow: type[Flow], events: EventLog) -> ScriptedStore:
    Seen.reset()
    store = ScriptedStore()
    claimed = task(flow.__name__.lower(), "nap" if flow is Sleeper else "spin")
    store.add(claimed)
    worker = Worker(
        [flow],
        NOWHERE,
        options=WorkerOptions(poll_interval=0.05, cancel_check_interval=0.05),
        store=store,
    )
    async with anyio.create_task_group() as group:
        await group.start(worker.serve)
        with anyio.fail_after(10):
            await anyio.to_thread.run_sync(Seen.started.wait)
            store.cancelled.add(claimed.run_id)
            while not events.named("task.cancelled"):
                await anyio.sleep(0.01)
        worker.stop()
    return store


async def test_an_async_handler_of_a_cancelled_run_is_cancelled_and_not_reported() -> None:
    events = EventLog()
    try:
        store = await serve_until_cancelled(Sleeper, events)
    finally:
        events.close()
    assert Seen.cancelled.is_set()
    assert store.completed == {}
    assert store.failed == {}
    [(fields, _at)] = events.named("run.cancelled_in_flight")
    assert fields["tasks"] == 1


async def test_a_sync_handler_sees_ctx_cancelled_and_its_result_is_ignored() -> None:
    events = EventLog()
    try:
        store = await serve_until_cancelled(Poller, events)
        with anyio.fail_after(10):
            await anyio.to_thread.run_sync(Seen.finished.wait)
    finally:
        events.close()
    assert Seen.cancelled.is_set()
    assert store.completed == {}
    assert store.failed == {}


def test_a_context_outside_a_worker_is_never_cancelled() -> None:
    assert Context(run_id=uuid.uuid4(), flow_slug="f", step_slug="s").cancelled is False
