"""The subflow starter: runs ``@subflow`` methods and starts child runs (docs/waiting.md).

A subflow step never has a message in its flow's queue (extension/0073): when it becomes ready
the database records one pending child start per task. A worker serving the parent flow leases
pending starts (``claim_child_starts``: another worker takes a start whose lease ran out), calls
the step's method with the task's input, and hands its result to ``start_child``, which starts
the child run unless one was started already — so a slow worker, a retry or a second worker
never start a second child. A method that raises (or returns something that is not JSON) is
retried after upstream's backoff while the step has attempts left; then the step and the run
fail. Children that ended are logged here too (``subflow.child_ended``, and with tracing on a
``pgflow.subflow`` span in the parent's trace): their end reached the parent inside the
transaction that ended them.

Only workers serving a flow with subflow steps run this service; it polls every
``poll_interval`` (at most every second) while idle.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

from pgflow import _sql, _tracing, telemetry
from pgflow.context import Context
from pgflow.dsl import Flow, HandlerSpec
from pgflow.worker._connection import CONNECT_TIMEOUT, contention
from pgflow.worker._executor import describe, sanitize
from pgflow.worker._repeats import RepeatedFailure
from pgflow.worker._session import ServingSession

BATCH = 10
"""Child starts whose methods run at once: a round leases only as many as are free, so one slow
method holds back no other start."""
LEASE_MARGIN = 10
"""Seconds a lease outlives the method's timeout."""
DEFAULT_TIMEOUT = 60
"""Seconds a method may take when neither the step nor the flow sets a timeout (upstream's)."""
REFUSALS = frozenset({"22", "23", "P0"})
"""SQLSTATE classes by which the database refuses a child's start (data, constraints, RAISE)."""


@dataclass(frozen=True, slots=True)
class ChildStart:
    run_id: uuid.UUID
    flow_slug: str
    step_slug: str
    task_index: int
    attempt: int
    child_flow_slug: str
    input: Any
    flow_input: Any


class SubflowStarter:
    """Leases pending child starts of the flows served, runs their methods, starts children."""

    async def run(self, session: ServingSession) -> None:
        served = {
            f.slug: (f.instance, f.flow_class.__pgflow_subflows__, f.flow_class)
            for f in session.flows
            if getattr(f.flow_class, "__pgflow_subflows__", None)
        }
        if not served:
            await anyio.sleep_forever()
        slugs = sorted(served)
        lease = LEASE_MARGIN + max(
            _timeout(flow_class, step) for _, specs, flow_class in served.values() for step in specs
        )
        interval = min(session.options.poll_interval, 1.0)
        failures = RepeatedFailure("subflow.starter_failed")
        # Leased starts whose method runs (no child started or failure recorded yet): given back
        # if the worker is cancelled meanwhile, so a restart does not wait out their lease.
        held: dict[_Key, ChildStart] = {}
        freed = anyio.Event()

        async def one(start: ChildStart) -> None:
            nonlocal freed
            instance, specs, flow_class = served[start.flow_slug]
            try:
                await _start_one(
                    session.engine, instance, specs[start.step_slug], flow_class, start, held=held
                )
            except Exception as exc:  # one start must not sink its siblings
                held.pop(_key(start), None)  # its lease runs out
                telemetry.emit(
                    "subflow.start_interrupted",
                    level=logging.WARNING,
                    **_fields(start),
                    error=_first_line(exc),
                )
            finally:  # cancelled in its method, it stays held: released below
                freed.set()
                freed = anyio.Event()

        try:
            async with anyio.create_task_group() as group:
                while not session.stopping.is_set():
                    free = BATCH - len(held)
                    starts: list[ChildStart] = []
                    try:
                        # Shielded: leases taken are in ``held`` before any cancellation lands.
                        with anyio.CancelScope(shield=True):
                            starts, ended = await anyio.to_thread.run_sync(
                                _round, session.engine, slugs, lease, free
                            )
                            for start in starts:
                                held[_key(start)] = start
                        _announce_ended(ended)
                    except Exception as exc:  # the next round tries again; a start comes late
                        failures.failed(error=str(exc))
                    else:
                        failures.succeeded()
                    for start in starts:
                        group.start_soon(one, start)
                    if free == 0 or len(starts) < free:
                        await _first_of(interval, session.stopping, freed)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(CONNECT_TIMEOUT):
                await _release(session.engine, list(held.values()))


_Key = tuple[uuid.UUID, str, int]


def _key(start: ChildStart) -> _Key:
    return (start.run_id, start.step_slug, start.task_index)


async def _first_of(timeout: float, *events: anyio.Event) -> None:
    """Return when any of ``events`` is set, or after ``timeout`` seconds."""
    with anyio.move_on_after(timeout):
        async with anyio.create_task_group() as group:

            async def wait(event: anyio.Event) -> None:
                await event.wait()
                group.cancel_scope.cancel()

            for event in events:
                group.start_soon(wait, event)


async def _release(engine: Engine, starts: list[ChildStart]) -> None:
    """Give leases back unused: due again at once, the attempt not counted."""
    if not starts:
        return
    try:
        count = await anyio.to_thread.run_sync(_release_blocking, engine, starts)
    except Exception as exc:  # the leases run out by themselves
        telemetry.emit("subflow.release_failed", level=logging.WARNING, error=_first_line(exc))
        return
    telemetry.emit("subflow.starts_released", count=count)


def _release_blocking(engine: Engine, starts: list[ChildStart]) -> int:
    with engine.begin() as connection:
        rows = connection.execute(
            _sql.query("release_child_starts"),
            {
                "run_ids": [s.run_id for s in starts],
                "step_slugs": [s.step_slug for s in starts],
                "task_indexes": [s.task_index for s in starts],
                "attempts": [s.attempt for s in starts],
            },
        ).all()
    return len(rows)


def _fields(start: ChildStart) -> dict[str, Any]:
    return {
        "flow": start.flow_slug,
        "run_id": str(start.run_id),
        "step": start.step_slug,
        "task_index": start.task_index,
        "attempt": start.attempt,
        "child_flow": start.child_flow_slug,
    }


def _first_line(exc: BaseException) -> str:
    text = describe(exc) if not isinstance(exc, DBAPIError) else f"{exc.orig}"
    return text.strip().split("\n", 1)[0]


def _refused(exc: DBAPIError) -> bool:
    """Whether the database refused the child's start itself (bad data, a constraint, a
    trigger's RAISE): SQLSTATE classes 22, 23 and P0. Anything else (a lost connection, a
    statement timeout, a deadlock, a missing grant) says nothing about the start."""
    sqlstate = getattr(exc.orig, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate[:2] in REFUSALS


def _timeout(flow_class: type[Flow], step_slug: str) -> int:
    definition = flow_class.__pgflow_definition__
    return definition.step(step_slug).timeout or definition.timeout or DEFAULT_TIMEOUT


def _round(
    engine: Engine, slugs: list[str], lease: int, limit: int
) -> tuple[list[ChildStart], list[Any]]:
    """One transaction: lease pending starts, take ended children to log."""
    with engine.begin() as connection:
        starts = _claim_on(connection, slugs, lease, limit)
        ended = connection.execute(
            _sql.query("take_ended_children"), {"flow_slugs": slugs, "row_limit": 100}
        ).all()
        # Each child taken, from its start to its end, in the parent run's trace (tracing on).
        _tracing.record_ended_children(
            connection, [(row.run_id, row.step_slug, row.task_index) for row in ended]
        )
    return starts, list(ended)


def _claim_on(connection: Connection, slugs: list[str], lease: int, limit: int) -> list[ChildStart]:
    rows = connection.execute(
        _sql.query("claim_child_starts"),
        {"flow_slugs": slugs, "lease_seconds": lease, "row_limit": limit},
    ).all()
    return [ChildStart(*row) for row in rows]


def _claim(engine: Engine, slugs: list[str], lease: int, limit: int) -> list[ChildStart]:
    """Lease pending starts (a round without the logging of ended children)."""
    with engine.begin() as connection:
        return _claim_on(connection, slugs, lease, limit)


async def _start_one(
    engine: Engine,
    instance: Flow,
    spec: HandlerSpec,
    flow_class: type[Flow],
    start: ChildStart,
    *,
    held: dict[_Key, ChildStart] | None = None,
) -> None:
    """Run the start's method, then start the child (or record the method's failure). While
    the method runs the start is in ``held`` (the starter gives back what it holds when
    cancelled)."""
    held = {} if held is None else held
    fields = _fields(start)
    timeout = _timeout(flow_class, start.step_slug)
    context = Context(
        run_id=start.run_id,
        flow_slug=start.flow_slug,
        step_slug=start.step_slug,
        task_index=start.task_index,
        attempt=start.attempt,
        engine=engine,
        known_flow_input=start.flow_input,
        event_loop=anyio.lowlevel.current_token(),
    )
    error: str | None = None
    try:
        timed_out, child_input = await _call(instance, spec, start.input, context, timeout)
    except Exception as exc:
        error = sanitize(describe(exc))
    else:
        if timed_out:
            error = f"TimeoutError: the subflow method took longer than {timeout} s"
        else:
            try:
                text = json.dumps(child_input, allow_nan=False)
            except (TypeError, ValueError) as exc:
                error = sanitize(
                    "ValueError: the subflow method must return the child's input as JSON "
                    f"(dicts, lists, strings, numbers, booleans, None): {exc}"
                )
    # From here the lease is settled by what is written (or runs out): not released on stop.
    held.pop(_key(start), None)
    if error is not None:
        await _report_failure(engine, start, fields, error)
        return
    try:
        outcome, child_run_id = await _start_child_traced(engine, start, text)
    except DBAPIError as exc:
        if _refused(exc):  # the child's start refused its input (a trigger, a bad map)
            await _report_failure(
                engine, start, fields, sanitize(f"the child run could not start: {exc.orig}")
            )
            return
        # Not the start's fault: no attempt spent. A lost lock race gives the lease back (due
        # again next round); otherwise it runs out (the start may even have committed).
        sqlstate = contention(exc)
        telemetry.emit(
            "subflow.start_interrupted",
            level=logging.WARNING,
            **fields,
            error=_first_line(exc),
            **({"sqlstate": sqlstate} if sqlstate else {}),
        )
        if sqlstate is not None:
            await _release(engine, [start])
        return
    telemetry.emit(
        "subflow.child_started",
        **fields,
        outcome=outcome,
        child_run_id=None if child_run_id is None else str(child_run_id),
    )


async def _report_failure(
    engine: Engine, start: ChildStart, fields: dict[str, Any], error: str
) -> None:
    outcome, retry_at = await anyio.to_thread.run_sync(_start_failed, engine, start, error)
    telemetry.emit(
        "subflow.start_failed",
        level=logging.WARNING,
        **fields,
        error=error,
        outcome=outcome,
        retry_at=None if retry_at is None else retry_at.isoformat(),
    )


async def _call(
    instance: Flow, spec: HandlerSpec, value: Any, context: Context, timeout: int
) -> tuple[bool, Any]:
    """(True, None) when the method ran past ``timeout``; else (False, what it returned). A
    TimeoutError the method raises itself is its own failure, not a timeout."""
    method = getattr(instance, spec.attribute)
    arguments = (value, context) if spec.takes_context else (value,)
    result: Any = None
    with anyio.move_on_after(timeout) as scope:
        if spec.is_async:
            result = await method(*arguments)
        else:
            result = await anyio.to_thread.run_sync(
                lambda: method(*arguments), abandon_on_cancel=True
            )
    if scope.cancelled_caught:
        return True, None
    return False, result


async def _start_child_traced(
    engine: Engine, start: ChildStart, text: str
) -> tuple[str, uuid.UUID | None]:
    """Start the child; with tracing on, inside a ``pgflow.start_flow`` span whose context the
    child run keeps (as a client's start stores one), so its tasks and its ``pgflow.subflow``
    span in the parent's trace link to it."""
    tracer = _tracing.current()
    if tracer is None:
        return await anyio.to_thread.run_sync(_start_child, engine, start, text, None)
    with tracer.start_flow(start.child_flow_slug) as span:
        outcome, child_run_id = await anyio.to_thread.run_sync(
            _start_child, engine, start, text, span.carrier()
        )
        if child_run_id is not None:
            span.started(child_run_id)
        return outcome, child_run_id


def _start_child(
    engine: Engine, start: ChildStart, text: str, trace_context: _tracing.Carrier | None
) -> tuple[str, uuid.UUID | None]:
    with engine.begin() as connection:
        row = connection.execute(
            _sql.query("start_child"),
            {
                "run_id": start.run_id,
                "step_slug": start.step_slug,
                "task_index": start.task_index,
                "child_input": text,
            },
        ).one()
        if trace_context and row.outcome == "started":
            connection.execute(
                _sql.query("store_child_trace_context"),
                {
                    "run_id": row.child_run_id,
                    "traceparent": trace_context["traceparent"],
                    "tracestate": trace_context.get("tracestate"),
                },
            )
    return str(row.outcome), row.child_run_id


def _start_failed(engine: Engine, start: ChildStart, error: str) -> tuple[str, Any]:
    with engine.begin() as connection:
        row = connection.execute(
            _sql.query("child_start_failed"),
            {
                "run_id": start.run_id,
                "step_slug": start.step_slug,
                "task_index": start.task_index,
                "attempt": start.attempt,
                "error_message": error,
            },
        ).one()
    return str(row.outcome), row.retry_at


def _announce_ended(rows: list[Any]) -> None:
    for row in rows:
        duration = (
            None
            if row.child_started_at is None
            else math.floor((row.ended_at - row.child_started_at).total_seconds() * 1000)
        )
        telemetry.emit(
            "subflow.child_ended",
            level=logging.INFO if row.outcome == "completed" else logging.WARNING,
            flow=row.flow_slug,
            run_id=str(row.run_id),
            step=row.step_slug,
            task_index=row.task_index,
            child_flow=row.child_flow_slug,
            child_run_id=str(row.child_run_id),
            outcome=row.outcome,
            duration_ms=duration,
        )
