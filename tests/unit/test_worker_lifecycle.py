"""The worker's lifecycle against a scripted store: readiness, stop semantics, crashes, services."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from pgflow import Flow, step
from pgflow.errors import WorkerCrashedError
from pgflow.worker import ServiceContext, Worker, WorkerOptions
from tests.helpers.scripted_store import ScriptedStore, lost, task
from tests.helpers.workers import EventLog

pytestmark = pytest.mark.anyio
NOWHERE = "postgresql://nobody@127.0.0.1:1/none"


class Gate:
    """Handlers wait at the gate until the test opens it."""

    entered = threading.Event()
    opened = threading.Event()


class Gated(Flow, slug="gated"):
    @step
    async def wait(self, input: Any) -> str:
        Gate.entered.set()
        while not Gate.opened.is_set():
            await anyio.sleep(0.01)
        return "done"


class Quick(Flow, slug="quick"):
    @step
    def echo(self, input: Any) -> Any:
        return input


@pytest.fixture(autouse=True)
def closed_gate() -> Iterator[None]:
    Gate.entered.clear()
    Gate.opened.clear()
    yield
    Gate.opened.set()


@pytest.fixture
def events() -> Iterator[EventLog]:
    log = EventLog()
    yield log
    log.close()


def worker(store: ScriptedStore, *flows: type[Flow], **options: Any) -> Worker:
    settings: dict[str, Any] = {"poll_interval": 0.05, "shutdown_timeout": 5.0, **options}
    return Worker(list(flows), NOWHERE, options=WorkerOptions(**settings), store=store)


async def wait_for(condition: Any, what: str, timeout: float = 5.0) -> None:
    with anyio.fail_after(timeout, shield=False):
        while not condition():
            await anyio.sleep(0.01)
    assert condition(), what


async def test_start_returns_once_registered_and_serve_returns_after_stop(
    events: EventLog,
) -> None:
    store = ScriptedStore()
    store.add(task("quick", "echo", flow_input={"n": 1}))
    subject = worker(store, Quick)
    async with anyio.create_task_group() as group:
        await group.start(subject.serve)
        assert store.calls[:2] == ["check_flows", "register"]  # checked before registering
        assert [r.queue_name for r in store.registered] == ["quick"]
        assert events.named("worker.started")
        await wait_for(lambda: store.completed, "the queued task to complete")
        subject.stop()
    assert list(store.completed.values()) == ['{"n": 1}']
    assert store.calls[-2:] == ["mark_stopped", "close"]
    assert events.named("worker.stopped")
    assert not events.named("worker.crashed")


async def test_stop_before_serve_registers_then_returns_without_claiming() -> None:
    store = ScriptedStore()
    store.add(task("quick", "echo"))
    subject = worker(store, Quick)
    subject.stop()
    with anyio.fail_after(5):
        await subject.serve()
    assert "claim" not in store.calls
    assert store.stopped == [r.worker_id for r in store.registered]


async def test_no_claim_starts_after_stop_even_when_a_poller_waits_for_a_slot() -> None:
    store = ScriptedStore()
    store.add(task("gated", "wait"), task("gated", "wait"))
    subject = worker(store, Gated, concurrency=1, batch_size=1)
    async with anyio.create_task_group() as group:
        await group.start(subject.serve)
        await wait_for(Gate.entered.is_set, "the first handler to start")
        # The poller now waits for the only slot; stopping must not let it claim when the
        # handler frees it.
        subject.stop()
        Gate.opened.set()
    assert store.calls.count("claim") == 1
    assert len(store.completed) == 1
    assert len(store.queued["gated"]) == 1


async def test_in_flight_handlers_past_the_shutdown_timeout_are_cancelled(
    events: EventLog,
) -> None:
    store = ScriptedStore()
    store.add(task("gated", "wait"))
    subject = worker(store, Gated, shutdown_timeout=0.2)
    async with anyio.create_task_group() as group:
        await group.start(subject.serve)
        await wait_for(Gate.entered.is_set, "the handler to start")
        started = time.monotonic()
        subject.stop()
    assert time.monotonic() - started < 3
    assert not store.completed
    assert events.named("worker.stopped")


class Failing:
    async def run(self, session: ServiceContext) -> None:
        await anyio.sleep(0.05)
        raise RuntimeError("service broke")


async def test_a_failing_service_is_a_crash_and_every_thread_ends(events: EventLog) -> None:
    store = ScriptedStore()
    subject = worker(store, Quick)
    subject.add_service(Failing())
    with pytest.raises(WorkerCrashedError, match="service broke") as raised:
        await subject.serve()
    assert isinstance(raised.value.__cause__, BaseException)
    [(crash, _)] = events.named("worker.crashed")
    assert crash["error"] == "RuntimeError: service broke"
    assert not events.named("worker.stopped")
    assert store.calls[-2:] == ["mark_stopped", "close"]
    # The LISTEN thread was told to stop (it used to loop until someone called stop()).
    await wait_for(lambda: not store.listening_thread.is_set(), "the LISTEN thread to end")


class Recording:
    def __init__(self) -> None:
        self.sessions: list[ServiceContext] = []
        self.cancelled = False

    async def run(self, session: ServiceContext) -> None:
        self.sessions.append(session)
        try:
            await anyio.sleep_forever()
        finally:
            self.cancelled = True


async def test_services_get_the_session_and_are_cancelled_after_the_drain() -> None:
    store = ScriptedStore()
    service = Recording()
    subject = Worker([Quick], NOWHERE, store=store, services=[service])
    async with anyio.create_task_group() as group:
        await group.start(subject.serve)
        await wait_for(lambda: service.sessions, "the service to start")
        [session] = service.sessions
        assert session.worker_ids == [r.worker_id for r in store.registered]
        assert not service.cancelled
        subject.stop()
    assert service.cancelled


async def test_cancelling_serve_is_an_abrupt_stop_not_a_crash(events: EventLog) -> None:
    store = ScriptedStore()
    subject = worker(store, Quick)
    async with anyio.create_task_group() as group:
        await group.start(subject.serve)
        group.cancel_scope.cancel()
    [(stopped, _)] = events.named("worker.stopped")
    assert stopped["cancelled"] is True
    assert not events.named("worker.crashed")
    await wait_for(lambda: not store.listening_thread.is_set(), "the LISTEN thread to end")


async def test_a_deprecated_worker_stops_itself(events: EventLog) -> None:
    store = ScriptedStore()
    store.deprecated = True
    subject = worker(store, Quick, heartbeat_interval=0.05, heartbeat_timeout=1)
    with anyio.fail_after(5):
        await subject.serve()
    assert events.named("worker.deprecated")
    assert events.named("worker.stopped")


async def test_serving_twice_at_once_is_refused() -> None:
    store = ScriptedStore()
    subject = worker(store, Quick)
    async with anyio.create_task_group() as group:
        await group.start(subject.serve)
        with pytest.raises(RuntimeError, match="already serving"):
            await subject.serve()
        subject.stop()
    # ...and a stopped worker can serve again.
    async with anyio.create_task_group() as group:
        await group.start(subject.serve)
        subject.stop()
    assert store.calls.count("register") == 2


def failing(times: int, error: Any) -> Any:
    """A script: ``error()`` for the first ``times`` calls, then nothing."""
    calls = [0]

    def script() -> Exception | None:
        calls[0] += 1
        return error() if calls[0] <= times else None

    return script


async def test_a_report_is_kept_and_retried_until_it_is_recorded(events: EventLog) -> None:
    store = ScriptedStore()
    store.add(task("quick", "echo", flow_input=7))
    store.report_error = failing(3, lost)
    subject = worker(store, Quick)
    async with anyio.create_task_group() as group:
        await group.start(subject.serve)
        await wait_for(lambda: store.completed, "the completion to be recorded")
        subject.stop()
    assert list(store.completed.values()) == ["7"]
    assert [f["retry"] for f, _ in events.named("task.report_retry")] == [1, 2, 3]


async def test_a_claim_failing_for_another_reason_is_retried_one_message_at_a_time() -> None:
    store = ScriptedStore()
    store.add(task("quick", "echo", flow_input=1))
    store.claim_error = failing(1, lambda: RuntimeError("input too large"))
    subject = worker(store, Quick)
    async with anyio.create_task_group() as group:
        await group.start(subject.serve)
        await wait_for(lambda: store.completed, "the task to complete")
        subject.stop()
    assert store.calls.index("claim_isolated") == store.calls.index("claim") + 1


async def test_after_a_lost_claim_reply_the_worker_gives_back_before_claiming_again() -> None:
    store = ScriptedStore()
    store.claim_error = failing(1, lost)
    subject = worker(store, Quick)
    async with anyio.create_task_group() as group:
        await group.start(subject.serve)
        await wait_for(lambda: "release_unstarted" in store.calls, "the release")
        subject.stop()
    first_claim = store.calls.index("claim")
    assert store.calls.index("release_unstarted") > first_claim
    assert "claim" in store.calls[store.calls.index("release_unstarted") :]
