"""Running one claimed task: its handler, then its report. Nothing a task does ends the runner."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio

from pgflow import _tracing, telemetry
from pgflow.context import Context
from pgflow.worker import _inputs
from pgflow.worker._cancellation import TaskCancellation
from pgflow.worker._executor import Completed, Failed, Outcome, describe, run_handler
from pgflow.worker._reporting import Reporter
from pgflow.worker._session import ServedFlow, ServingSession
from pgflow.worker._store import ClaimedTask
from pgflow.worker._threads import HandlerThreads


async def execute(
    session: ServingSession,
    reporter: Reporter,
    threads: HandlerThreads,
    served: ServedFlow,
    task: ClaimedTask,
) -> None:
    fields: dict[str, Any] = {
        "flow": task.flow_slug,
        "step": task.step_slug,
        "run_id": str(task.run_id),
        "task_index": task.task_index,
        "attempt": task.attempt,
    }
    slot = _Slot(session)
    cancellation = session.cancellations.add(task.run_id)
    spec = served.handlers.get(task.step_slug)
    if spec is not None and spec.is_async:
        session.async_deadlines[task.key] = anyio.current_time() + task.timeout
    try:
        started = time.perf_counter()
        with cancellation.scope:
            outcome = await _outcome(
                session, threads, served, task, fields=fields, slot=slot, cancel=cancellation
            )
        # The handler has ended: it can no longer be overdue (OverdueHandlers).
        session.async_deadlines.pop(task.key, None)
        fields["duration_ms"] = round((time.perf_counter() - started) * 1000, 3)
        if cancellation.requested:
            # The run was cancelled while the handler ran: nothing to report (a late result
            # must not look like work done; upstream would ignore it on a failed run anyway).
            telemetry.emit("task.cancelled", **fields)
            return
        await reporter.report(served.worker_id, task, outcome, fields)
    finally:
        session.cancellations.discard(cancellation)
        session.running.discard(task.key)
        session.async_deadlines.pop(task.key, None)
        slot.release()


class _Slot:
    """A task's concurrency slot, freed once its last holder lets go (the task, and the
    thread of a sync handler that outlived its timeout)."""

    def __init__(self, session: ServingSession) -> None:
        self._session = session
        self._holders = 1

    def keep(self) -> Callable[[], None]:
        self._holders += 1
        return self.release

    def release(self) -> None:
        self._holders -= 1
        if self._holders == 0:
            self._session.slots.release()


async def _outcome(
    session: ServingSession,
    threads: HandlerThreads,
    served: ServedFlow,
    task: ClaimedTask,
    *,
    fields: dict[str, Any],
    slot: _Slot,
    cancel: TaskCancellation,
) -> Outcome:
    spec = served.handlers.get(task.step_slug)
    if spec is None:
        # Deploy order: the flow was re-created with a new shape while this (older) code still
        # serves it. Failing the attempt lets upstream retry it, with back-off, on a worker
        # that runs the new code.
        return Failed(
            f"UnknownStepError: flow {served.slug!r} has a step {task.step_slug!r} that this "
            f"worker's class {served.registration.function_name} does not define: the flow in "
            "the database is newer than this worker's code; deploy the code that defines the "
            "step (and restart workers) after the migration that added it"
        )
    try:
        step = served.definition.step(task.step_slug)
        known = _inputs.flow_input(task.record)
        handler_input = _inputs.handler_input(step, task.record)
        context = Context(
            run_id=task.run_id,
            flow_slug=task.flow_slug,
            step_slug=task.step_slug,
            task_index=task.task_index,
            attempt=task.attempt,
            engine=session.engine,
            **({} if known is None else {"known_flow_input": known}),
            load_flow_input=lambda: session.store.run_input(task.run_id),
            event_loop=threads.event_loop,
            cancellation=cancel.flag,
        )
    except Exception as exc:
        return Failed(f"the worker could not prepare the handler's input: {describe(exc)}")
    telemetry.emit("task.started", **fields)

    async def run() -> Outcome:
        outcome = await run_handler(
            served.instance,
            spec,
            handler_input,
            context,
            timeout=task.timeout,
            threads=threads,
            keep_slot=slot.keep,
        )
        return _check_map_source(served, task, outcome)

    tracer = _tracing.current()
    if tracer is None:
        return await run()
    attempt = _tracing.TaskAttempt(
        task.flow_slug, task.step_slug, task.run_id, task.task_index, task.attempt
    )
    with tracer.task(attempt, task.trace_context) as span:
        outcome = await run()
        span.finished(
            *(("failed", outcome.error) if isinstance(outcome, Failed) else ("completed",))
        )
        return outcome


def _check_map_source(served: ServedFlow, task: ClaimedTask, outcome: Outcome) -> Outcome:
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
