"""The worker: claims tasks of the flows it serves, runs their handlers, reports results.

Lifecycle of ``serve()``: check the database, register, emit ``worker.started`` and signal
readiness (``task_status.started()``), then claim and run until :meth:`Worker.stop`; drain
in-flight handlers for up to ``shutdown_timeout``; cancel the background services; mark the
workers stopped; emit ``worker.stopped``. Ending any other way (an error escaping a service or
the claim loop) emits ``worker.crashed`` and raises, so the process exits non-zero.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Sequence

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream
from sqlalchemy.engine import URL, Engine

from pgflow import _db, telemetry
from pgflow._task_groups import sole_exception
from pgflow.dsl import Flow
from pgflow.errors import WorkerCrashedError
from pgflow.worker._claiming import Claimed, poll
from pgflow.worker._deadlines import DeadlineSweep
from pgflow.worker._executor import describe
from pgflow.worker._options import WorkerOptions
from pgflow.worker._postgres import PostgresStore
from pgflow.worker._reporting import Reporter
from pgflow.worker._running import execute
from pgflow.worker._scheduler import SchedulerService
from pgflow.worker._services import (
    CancelWatcher,
    Heartbeats,
    LoopWatchdog,
    OverdueHandlers,
    RecoverySweep,
    SessionService,
    WakeupListener,
    WorkerService,
)
from pgflow.worker._session import ServedFlow, ServingSession
from pgflow.worker._statistics import StatisticsUpkeep
from pgflow.worker._store import WorkerStore
from pgflow.worker._subflows import SubflowStarter
from pgflow.worker._threads import HandlerThreads

FORCED_EXIT_GRACE = 10.0
EXIT_FORCED = 70  # EX_SOFTWARE


class Worker:
    """Serves flows: ``Worker([MyFlow, MyJob], engine).run()`` or ``await worker.serve()``.

    ``services`` are extra background services (objects with ``async run(context)``, see
    :class:`~pgflow.worker.WorkerService`) started next to the built-in ones while serving.
    ``store`` replaces the PostgreSQL store (a subclass that injects faults, or a scripted one
    in unit tests); every check and service goes through it.
    """

    def __init__(
        self,
        flows: Sequence[type[Flow]],
        database: Engine | URL | str,
        *,
        options: WorkerOptions | None = None,
        compile_missing: bool = False,
        services: Sequence[WorkerService] = (),
        store: WorkerStore | None = None,
    ) -> None:
        if not flows:
            raise ValueError("a worker needs at least one Flow or Job class")
        self.options = options or WorkerOptions()
        self._engine = database if isinstance(database, Engine) else _db.create_engine(database)
        # None: a PostgresStore made for each serve() (it depends on where the engine connects).
        self._given_store = store
        self._store: WorkerStore = store or self._postgres_store()
        self._compile_missing = compile_missing
        self._flows = [ServedFlow.of(flow) for flow in flows]
        self._services = [*services]
        self._stop_requested = False
        self._session: ServingSession | None = None
        self._loop_token: anyio.lowlevel.EventLoopToken | None = None
        self._loop_thread: int | None = None

    def add_service(self, service: WorkerService) -> None:
        """Run ``service`` in the background of every later :meth:`serve`."""
        self._services.append(service)

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until SIGTERM/SIGINT (a second signal stops at once). Blocks; owns the loop.

        Off the main thread (a worker embedded in an application) no signal handlers are
        installed (Python only allows them on the main thread): end it with :meth:`stop`,
        from any thread.

        Raises :class:`WorkerCrashedError` (after a ``worker.crashed`` event) when serving
        ends for any other reason, so the process exits non-zero and a supervisor restarts it.
        """
        ended = threading.Event()
        threading.Thread(
            target=self._exit_when_stuck, args=(ended,), name="pgflow-exit-watch", daemon=True
        ).start()
        try:
            anyio.run(self._serve_with_signals)
        except BaseExceptionGroup as group:
            raise sole_exception(group) from None
        finally:
            ended.set()

    def _exit_when_stuck(self, ended: threading.Event) -> None:
        """The last resort of a process that owns its loop: when serving has been ending for
        longer than ``shutdown_timeout`` plus a grace period (an async handler that swallows
        its cancellation keeps the loop from finishing), exit the process anyway, non-zero."""
        limit = self.options.shutdown_timeout + FORCED_EXIT_GRACE
        while not ended.wait(0.5):
            session = self._session
            if session is None or session.ending_since is None:
                continue
            if time.monotonic() - session.ending_since > limit:
                telemetry.emit(
                    "worker.exit_forced",
                    level=logging.ERROR,
                    error=f"serving did not end {limit:g}s after it was asked to",
                    running=[f"{k.step_slug}[{k.task_index}]" for k in list(session.running)],
                )
                os._exit(EXIT_FORCED)

    async def _serve_with_signals(self) -> None:
        self._loop_thread = threading.get_ident()
        self._loop_token = anyio.lowlevel.current_token()
        try:
            if threading.current_thread() is not threading.main_thread():
                await self.serve()
                return
            async with anyio.create_task_group() as group:
                group.start_soon(self._watch_signals)
                await self.serve()
                group.cancel_scope.cancel()
        finally:
            self._loop_token = None

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                session = self._session
                if session is not None and session.stopping.is_set():
                    telemetry.emit("worker.stopping", now=True, signal=signum)
                    session.cancel_handlers()
                else:
                    self.stop()

    def stop(self) -> None:
        """Stop claiming; in-flight handlers get ``shutdown_timeout`` seconds to finish.

        Called before :meth:`serve`, the next ``serve()`` stops as soon as it has started.
        Call it from the event loop's thread, or from any thread while :meth:`run` serves.
        """
        token = self._loop_token
        if token is not None and threading.get_ident() != self._loop_thread:
            # A RuntimeError means the loop has just ended: nothing is left to stop.
            with contextlib.suppress(RuntimeError):
                anyio.from_thread.run_sync(self.stop, token=token)
            return
        if self._stop_requested:
            return
        self._stop_requested = True
        telemetry.emit("worker.stopping", shutdown_timeout=self.options.shutdown_timeout)
        if self._session is not None:
            self._session.stop()

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Serve inside the caller's event loop (asyncio or trio) until :meth:`stop`.

        ``await task_group.start(worker.serve)`` returns once the worker is registered and
        about to claim. Returns after a stop; raises if serving fails.
        """
        if self._session is not None:
            raise RuntimeError("this worker is already serving")
        if self._given_store is None:
            self._store = await anyio.to_thread.run_sync(self._postgres_store)
        session = ServingSession(self._flows, self._store, self.options, self._engine)
        self._session = session
        if self._stop_requested:
            session.stop()
        try:
            await self._start(session)
        except BaseException:
            self._session = None
            self._stop_requested = False
            with anyio.CancelScope(shield=True):
                await self._store.close()
            raise
        task_status.started()
        try:
            await self._serve(session)
            _raise_if_crashed(session)
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await self._finish(session, crash=exc)
            if isinstance(exc, anyio.get_cancelled_exc_class()):
                raise
            raise WorkerCrashedError(f"the worker stopped serving: {_crash_text(exc)}") from exc
        with anyio.CancelScope(shield=True):
            await self._finish(session, crash=None)

    def _postgres_store(self) -> PostgresStore:
        """The store for this serving, on the engine's server: through a transaction pooler
        (the engine's connections never prepare) it prepares nothing either, and LISTENs only
        on ``listen_url``."""
        through_pooler = _db.engine_through_pooler(self._engine)
        if self.options.listen_url is not None:
            listen: str | None = _db.conninfo(self.options.listen_url)
        else:
            listen = None if through_pooler else _db.conninfo(self._engine.url)
        return PostgresStore(
            _db.conninfo(self._engine.url),
            prepare=not through_pooler,
            listen_conninfo=listen,
            engine=self._engine,
        )

    async def _start(self, session: ServingSession) -> None:
        definitions = [served.definition for served in self._flows]
        store = self._store
        await store.check_flows(definitions, compile_missing=self._compile_missing)
        await self._store.register([served.registration for served in self._flows])
        telemetry.emit(
            "worker.started",
            flows=[d.slug for d in definitions],
            worker_ids=[str(s.worker_id) for s in self._flows],
            concurrency=self.options.concurrency,
            host=socket.gethostname(),
        )
        if not store.listening:
            telemetry.emit(
                "worker.polling",
                reason="the database URL goes through a transaction pooler (no LISTEN there) "
                "and no listen_url (--listen-url, PGFLOW_LISTEN_URL) is set",
                poll_interval=self.options.poll_interval,
            )

    async def _serve(self, session: ServingSession) -> None:
        reporter = Reporter(self._store, on_failed=session.wake_worker)
        services: list[SessionService] = [
            Heartbeats(),
            RecoverySweep(),
            WakeupListener(),
            CancelWatcher(),
            LoopWatchdog(),
            OverdueHandlers(),
            StatisticsUpkeep(),
            DeadlineSweep(),
            SubflowStarter(),
        ]
        if self.options.scheduler:
            services.append(SchedulerService())
        async with anyio.create_task_group() as background:
            background.start_soon(reporter.run)
            for service in [*services, *self._services]:
                background.start_soon(_supervised, service, session)
            await self._claim_and_run(session, reporter)
            background.cancel_scope.cancel()

    async def _claim_and_run(self, session: ServingSession, reporter: Reporter) -> None:
        claimed, to_run = anyio.create_memory_object_stream[Claimed](math.inf)

        def all_threads_stuck(count: int) -> None:
            telemetry.emit("worker.threads_stuck", level=logging.ERROR, threads=count)
            session.crash(
                f"all {count} handler threads still run sync handlers past their timeout; "
                "Python cannot stop a thread, so only a new process frees them"
            )

        threads = HandlerThreads(self.options.concurrency, on_all_stuck=all_threads_stuck)
        try:
            with claimed, to_run, session.handlers_scope:
                async with anyio.create_task_group() as handlers:
                    # One long-lived runner per slot: far cheaper than a task per claimed task.
                    for _ in range(self.options.concurrency):
                        handlers.start_soon(_run_claimed, session, reporter, threads, to_run)
                    async with anyio.create_task_group() as pollers:
                        for served in self._flows:
                            pollers.start_soon(poll, session, served, claimed)
                        await session.stopping.wait()
                        pollers.cancel_scope.cancel()
                    with anyio.move_on_after(self.options.shutdown_timeout):
                        await _drained(session)
                    session.handlers_scope.cancel()
        finally:
            threads.close()

    async def _finish(self, session: ServingSession, *, crash: BaseException | None) -> None:
        self._session = None
        self._stop_requested = False
        flows = [served.slug for served in self._flows]
        try:
            await self._store.mark_stopped(session.worker_ids)
        except Exception as exc:
            telemetry.emit("worker.stop_unrecorded", level=logging.WARNING, error=str(exc))
        await self._store.close()
        if crash is None:
            telemetry.emit("worker.stopped", flows=flows)
        elif isinstance(crash, anyio.get_cancelled_exc_class()):
            # The caller cancelled serve(): a stop, if an abrupt one.
            telemetry.emit("worker.stopped", flows=flows, cancelled=True)
        else:
            telemetry.emit(
                "worker.crashed",
                level=logging.ERROR,
                flows=flows,
                error=_crash_text(crash),
                traceback="".join(traceback.format_exception(crash)),
            )


def _raise_if_crashed(session: ServingSession) -> None:
    if session.crash_reason is not None:
        raise WorkerCrashedError(session.crash_reason)


async def _drained(session: ServingSession) -> None:
    """Until every claimed task has run and reported (a sync handler that outlived its timeout
    has reported its timeout; its thread may never end, and is not waited for)."""
    while session.running:
        await anyio.sleep(0.05)


async def _supervised(service: SessionService, session: ServingSession) -> None:
    try:
        await service.run(session)
    except BaseException:
        if session.ending_since is None:  # the start of a crash
            session.ending_since = time.monotonic()
        raise


async def _run_claimed(
    session: ServingSession,
    reporter: Reporter,
    threads: HandlerThreads,
    to_run: MemoryObjectReceiveStream[Claimed],
) -> None:
    async for served, task in to_run:
        await execute(session, reporter, threads, served, task)


def _crash_text(error: BaseException) -> str:
    return describe(sole_exception(error) if isinstance(error, BaseExceptionGroup) else error)
