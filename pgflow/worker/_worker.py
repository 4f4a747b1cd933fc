"""The worker: claims tasks of the flows it serves, runs their handlers, reports results."""

from __future__ import annotations

import logging
import math
import signal
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
import psycopg
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from sqlalchemy.engine import URL, Engine

from pgflow import telemetry
from pgflow._db import create_engine, normalize_url
from pgflow.context import Context
from pgflow.definition import FlowDefinition, StepType
from pgflow.dsl import Flow, HandlerSpec, definition_of
from pgflow.worker import _inputs
from pgflow.worker._database import ClaimedTask, Connection, claimed_from_rows
from pgflow.worker._executor import Completed, Failed, Outcome, run_handler
from pgflow.worker._options import WorkerOptions
from pgflow.worker._reporting import Reporter
from pgflow.worker._startup import check_flows

WAKEUP_CHANNEL = "pgflow_wakeup"


@dataclass
class _ServedFlow:
    flow_class: type[Flow]
    definition: FlowDefinition
    handlers: dict[str, HandlerSpec]
    instance: Flow
    worker_id: uuid.UUID = field(default_factory=uuid.uuid4)
    wakeup: anyio.Event | None = None
    feeds_map: frozenset[str] = frozenset()


class Worker:
    """Serves flows: ``Worker([MyFlow, MyJob], engine).run()`` or ``await worker.serve()``."""

    def __init__(
        self,
        flows: Sequence[type[Flow]],
        database: Engine | URL | str,
        *,
        options: WorkerOptions | None = None,
        compile_missing: bool = False,
    ) -> None:
        if not flows:
            raise ValueError("a worker needs at least one Flow or Job class")
        self.options = options or WorkerOptions()
        self._engine = database if isinstance(database, Engine) else create_engine(database)
        self._conninfo = normalize_url(self._engine.url).set(drivername="postgresql")
        self._compile_missing = compile_missing
        self._flows = [self._served(flow) for flow in flows]
        self._stop_requested = False
        self._claimer = self._connection("claim")
        self._reporter = self._connection("report")
        self._service = self._connection("service")

    @staticmethod
    def _served(flow_class: type[Flow]) -> _ServedFlow:
        definition = definition_of(flow_class)
        feeds_map = frozenset(
            dep
            for step in definition.steps
            if step.step_type is StepType.MAP
            for dep in step.depends_on
            if definition.step(dep).step_type is StepType.SINGLE
        )
        return _ServedFlow(
            flow_class,
            definition,
            dict(flow_class.__pgflow_handlers__),
            flow_class(),
            feeds_map=feeds_map,
        )

    def _connection(self, role: str) -> Connection:
        conninfo = self._conninfo.render_as_string(hide_password=False)
        return Connection(conninfo, application_name=f"pgflow-worker:{role}")

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (a second signal stops at once). Blocks; owns the loop."""
        try:
            anyio.run(self._serve_with_signals)
        except BaseExceptionGroup as group:
            raise _sole_exception(group) from None

    async def _serve_with_signals(self) -> None:
        async with anyio.create_task_group() as group:
            group.start_soon(self._watch_signals)
            await self.serve()
            group.cancel_scope.cancel()

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if self._stopping.is_set():
                    telemetry.emit("worker.stopping", now=True, signal=signum)
                    self._handlers_scope.cancel()
                else:
                    self.stop()

    def stop(self) -> None:
        """Stop claiming; in-flight handlers get ``shutdown_timeout`` seconds to finish."""
        if self._stop_requested:
            return
        self._stop_requested = True
        telemetry.emit("worker.stopping", shutdown_timeout=self.options.shutdown_timeout)
        if hasattr(self, "_stopping"):
            self._stopping.set()
            for served in self._flows:
                self._wake(served)

    def _wake_worker(self, worker_id: uuid.UUID) -> None:
        for served in self._flows:
            if served.worker_id == worker_id:
                self._wake(served)

    @staticmethod
    def _wake(served: _ServedFlow) -> None:
        if served.wakeup is not None:
            served.wakeup.set()

    async def serve(self) -> None:
        """Serve inside the caller's event loop (asyncio or trio) until :meth:`stop`."""
        # anyio primitives belong to the running loop, so they are made here, not in __init__.
        self._slots = anyio.Semaphore(self.options.concurrency)
        self._threads = anyio.CapacityLimiter(self.options.concurrency)
        self._stopping = anyio.Event()
        self._handlers_scope = anyio.CancelScope()
        self._reports = Reporter(self._reporter, on_failed=self._wake_worker)
        if self._stop_requested:
            self._stopping.set()
        definitions = [served.definition for served in self._flows]
        await anyio.to_thread.run_sync(
            lambda: check_flows(self._engine, definitions, compile_missing=self._compile_missing)
        )
        await self._register()
        telemetry.emit(
            "worker.started",
            flows=[d.slug for d in definitions],
            worker_ids=[str(s.worker_id) for s in self._flows],
            concurrency=self.options.concurrency,
            host=socket.gethostname(),
        )
        try:
            async with anyio.create_task_group() as services:
                services.start_soon(self._reports.run)
                services.start_soon(self._heartbeats)
                services.start_soon(self._listen)
                services.start_soon(self._recover_stalled)
                await self._claim_and_run()
                services.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._shutdown()

    async def _claim_and_run(self) -> None:
        claimed, to_run = anyio.create_memory_object_stream[tuple[_ServedFlow, ClaimedTask]](
            math.inf
        )
        with claimed, to_run, self._handlers_scope:
            async with anyio.create_task_group() as handlers:
                # One long-lived runner per slot: far cheaper than a new task per claimed task.
                for _ in range(self.options.concurrency):
                    handlers.start_soon(self._run_claimed, to_run)
                async with anyio.create_task_group() as pollers:
                    for served in self._flows:
                        pollers.start_soon(self._poll, served, claimed)
                # Pollers end when stopping. Every handler holds a slot until it has reported,
                # so holding all slots means all in-flight work is done.
                with anyio.move_on_after(self.options.shutdown_timeout):
                    for _ in range(self.options.concurrency):
                        await self._slots.acquire()
                self._handlers_scope.cancel()

    async def _register(self) -> None:
        for served in self._flows:
            await self._service.fetch(
                "register_worker",
                worker_id=served.worker_id,
                queue_name=served.definition.slug,
                function_name=f"{served.flow_class.__module__}.{served.flow_class.__qualname__}",
            )
            await self._service.fetch("ensure_wakeup_trigger", queue_name=served.definition.slug)

    async def _shutdown(self) -> None:
        try:
            await self._service.fetch(
                "mark_stopped", worker_ids=[served.worker_id for served in self._flows]
            )
        except psycopg.Error as exc:
            telemetry.emit("worker.stop_unrecorded", level=logging.WARNING, error=str(exc))
        for connection in (self._claimer, self._reporter, self._service):
            await connection.close()
        telemetry.emit("worker.stopped", flows=[s.definition.slug for s in self._flows])

    # -- claiming --------------------------------------------------------------------------

    async def _run_claimed(
        self, to_run: MemoryObjectReceiveStream[tuple[_ServedFlow, ClaimedTask]]
    ) -> None:
        async for served, task in to_run:
            await self._execute(served, task)

    async def _poll(
        self, served: _ServedFlow, claimed: MemoryObjectSendStream[tuple[_ServedFlow, ClaimedTask]]
    ) -> None:
        slug = served.definition.slug
        while not self._stopping.is_set():
            await self._slots.acquire()
            # Handlers whose reports were just recorded release their slots in the next round
            # of the event loop: let them, so the claim takes a whole batch, not one task.
            await anyio.lowlevel.checkpoint()
            slots = 1
            while slots < self.options.batch_size and self._slots.value > 0:
                self._slots.acquire_nowait()
                slots += 1
            served.wakeup = anyio.Event()
            telemetry.emit("poll.started", level=logging.DEBUG, flow=slug, slots=slots)
            try:
                tasks = claimed_from_rows(
                    await self._claimer.fetch(
                        "claim_tasks",
                        flow_slug=slug,
                        vt=self.options.visibility_timeout,
                        qty=slots,
                        worker_id=served.worker_id,
                        margin=self.options.visibility_margin,
                    )
                )
            except psycopg.Error as exc:
                tasks = []
                telemetry.emit("poll.failed", level=logging.WARNING, flow=slug, error=str(exc))
                await self._backoff()
            for _ in range(slots - len(tasks)):
                self._slots.release()
            telemetry.emit("poll.finished", level=logging.DEBUG, flow=slug, claimed=len(tasks))
            for task in tasks:
                claimed.send_nowait((served, task))
            if len(tasks) < slots:
                # No more visible messages: wait for a wake-up rather than claiming again at
                # once. The wake-up event was armed before this claim, so none is missed.
                await self._idle(served)

    async def _idle(self, served: _ServedFlow) -> None:
        wait = self.options.poll_interval
        try:
            rows = await self._claimer.fetch("next_visible_at", queue_name=served.definition.slug)
            at: datetime | None = rows[0]["at"]
            if at is not None:
                wait = min(wait, max(0.0, (at - datetime.now(UTC)).total_seconds()))
        except psycopg.Error:
            pass  # the plain poll interval still applies
        if served.wakeup is None or served.wakeup.is_set():
            return
        with anyio.move_on_after(wait):
            await served.wakeup.wait()

    async def _backoff(self) -> None:
        with anyio.move_on_after(1.0):
            await self._stopping.wait()

    # -- running ---------------------------------------------------------------------------

    async def _execute(self, served: _ServedFlow, task: ClaimedTask) -> None:
        try:
            step = served.definition.step(task.step_slug)
            known = _inputs.flow_input(task.record)
            context = Context(
                run_id=task.run_id,
                flow_slug=task.flow_slug,
                step_slug=task.step_slug,
                task_index=task.task_index,
                attempt=task.attempt,
                engine=self._engine,
                **({} if known is None else {"known_flow_input": known}),
                load_flow_input=lambda: self._load_flow_input(task.run_id),
            )
            fields: dict[str, Any] = {
                "flow": task.flow_slug,
                "step": task.step_slug,
                "run_id": str(task.run_id),
                "task_index": task.task_index,
                "attempt": task.attempt,
            }
            telemetry.emit("task.started", **fields)
            started = time.perf_counter()
            outcome = await run_handler(
                served.instance,
                served.handlers[task.step_slug],
                _inputs.handler_input(step, task.record),
                context,
                timeout=task.timeout,
                thread_limiter=self._threads,
            )
            outcome = self._check_map_source(served, task, outcome)
            fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
            await self._reports.report(served.worker_id, task, outcome, fields)
        finally:
            self._slots.release()

    @staticmethod
    def _check_map_source(served: _ServedFlow, task: ClaimedTask, outcome: Outcome) -> Outcome:
        """Upstream fails the whole run when a step feeding a map returns a non-array; say why."""
        if (
            isinstance(outcome, Completed)
            and task.step_slug in served.feeds_map
            and not outcome.output_json.startswith("[")
        ):
            dependents = served.definition.dependents(task.step_slug)
            return Failed(
                f"TypeError: step {task.step_slug!r} feeds map step(s) {list(dependents)} "
                f"and must return a JSON array, got {outcome.output_json[:80]}"
            )
        return outcome

    async def _load_flow_input(self, run_id: uuid.UUID) -> Any:
        rows = await self._service.fetch("run_input", run_id=run_id)
        return rows[0]["input"] if rows else None

    # -- background services ---------------------------------------------------------------

    async def _heartbeats(self) -> None:
        ids = [served.worker_id for served in self._flows]
        while True:
            await anyio.sleep(self.options.heartbeat_interval)
            try:
                rows = await self._service.fetch("heartbeat", worker_ids=ids)
            except psycopg.Error as exc:
                telemetry.emit("worker.heartbeat_failed", level=logging.WARNING, error=str(exc))
                continue
            if not rows:
                await self._register()  # rows deleted by someone: register again
            elif any(row["deprecated_at"] is not None for row in rows):
                telemetry.emit("worker.deprecated")
                self.stop()

    async def _recover_stalled(self) -> None:
        while True:
            await anyio.sleep(self.options.recovery_interval)
            try:
                rows = await self._service.fetch(
                    "recover_stalled_tasks",
                    heartbeat_timeout=self.options.heartbeat_timeout,
                    max_requeues=self.options.max_requeues,
                )
            except psycopg.Error as exc:
                telemetry.emit("tasks.recovery_failed", level=logging.WARNING, error=str(exc))
                continue
            if rows:
                telemetry.emit(
                    "tasks.recovered",
                    level=logging.WARNING,
                    tasks=[{k: str(v) for k, v in row.items()} for row in rows],
                )

    async def _listen(self) -> None:
        """Wake pollers on NOTIFY from the queue triggers; polling covers any gap."""
        by_queue = {served.definition.slug: served for served in self._flows}
        conninfo = self._conninfo.render_as_string(hide_password=False)

        def wake(queue: str) -> None:
            served = by_queue.get(queue)
            if served is not None:
                self._wake(served)

        def listen_blocking() -> None:
            while not self._stopping.is_set():
                try:
                    with psycopg.connect(
                        conninfo, autocommit=True, application_name="pgflow-worker:listen"
                    ) as connection:
                        connection.execute(f"LISTEN {WAKEUP_CHANNEL}")
                        while not self._stopping.is_set():
                            for notice in connection.notifies(timeout=0.5):
                                anyio.from_thread.run_sync(wake, notice.payload)
                except psycopg.OperationalError:
                    time.sleep(1.0)

        await anyio.to_thread.run_sync(listen_blocking, abandon_on_cancel=True)


def _sole_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """Task groups wrap even a single error; unwrap it so callers see e.g. FlowNotReadyError."""
    leaves: list[BaseException] = []

    def collect(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                collect(inner)
        else:
            leaves.append(error)

    collect(group)
    return leaves[0] if len(leaves) == 1 else group
