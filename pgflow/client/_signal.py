"""Signalling wait steps: ``signal`` and ``signal_async`` (docs/waiting.md)."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.engine import Connection

from pgflow import _tracing, telemetry
from pgflow._binds import AsyncBind, RunId, SyncBind, as_run_id, connection_for, run_async
from pgflow._sql import query
from pgflow.errors import (
    NotAWaitStepError,
    SignalOutputNotJSONError,
    SignalTooLateError,
    UnknownRunError,
)
from pgflow.results import RunStatus, SignalOutcome, SignalResult, StepStatus


def signal(bind: SyncBind, run_id: RunId, step_slug: str, output: Any = None) -> SignalResult:
    """Complete wait step ``step_slug`` of run ``run_id`` with ``output`` (any JSON value); the
    run goes on from there as if a handler had returned ``output``.

    With a ``Session`` or ``Connection`` this happens in the caller's transaction: the step
    completes when the caller commits, and a rollback changes nothing. With an ``Engine`` it is
    committed before this returns.

    The first signal of a step wins: a repeated one changes nothing and returns
    ``outcome="already_signalled"``. A signal that arrives before the step waits (its
    dependencies still run) is kept (``"kept"``) and completes the step as soon as it waits.
    Raises :class:`~pgflow.errors.UnknownRunError`, :class:`~pgflow.errors.NotAWaitStepError`
    (no such step, or a step that runs a handler), :class:`~pgflow.errors.SignalTooLateError`
    (the run ended, or the step timed out), :class:`~pgflow.errors.SignalOutputNotJSONError`;
    none of them changes anything.
    """
    run, encoded = _prepare(run_id, step_slug, output)
    with connection_for(bind) as connection:
        return _signal(connection, run, step_slug, encoded)


async def signal_async(
    bind: AsyncBind, run_id: RunId, step_slug: str, output: Any = None
) -> SignalResult:
    """:func:`signal` for an ``AsyncSession``, ``AsyncConnection`` or ``AsyncEngine``."""
    run, encoded = _prepare(run_id, step_slug, output)
    return await run_async(bind, _signal, run, step_slug, encoded)


def _prepare(run_id: RunId, step_slug: str, output: Any) -> tuple[Any, str]:
    if not isinstance(step_slug, str) or not step_slug:
        raise ValueError(f"step_slug must be a non-empty str, got {step_slug!r}")
    try:
        encoded = json.dumps(output, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SignalOutputNotJSONError(step_slug, str(exc)) from None
    if "\\u0000" in encoded:
        raise SignalOutputNotJSONError(
            step_slug, "it contains a NUL character, which jsonb rejects"
        )
    return as_run_id(run_id), encoded


def _signal(connection: Connection, run_id: Any, step_slug: str, encoded: str) -> SignalResult:
    tracer = _tracing.current()
    if tracer is None:
        return _apply(connection, run_id, step_slug, encoded)[0]
    with tracer.signal(run_id, step_slug) as span:
        result, flow_slug = _apply(connection, run_id, step_slug, encoded)
        span.finished(str(result.outcome), flow_slug)
        if result.outcome is SignalOutcome.COMPLETED:
            # In the caller's transaction: the wait it ended, drawn in the run's trace.
            _tracing.record_ended_waits(connection, [(run_id, step_slug)], span.carrier())
        return result


def _apply(
    connection: Connection, run_id: Any, step_slug: str, encoded: str
) -> tuple[SignalResult, str]:
    row = (
        connection.execute(
            query("client_signal"), {"run_id": run_id, "step_slug": step_slug, "output": encoded}
        )
        .mappings()
        .one()
    )
    outcome = row["outcome"]
    if outcome == "unknown_run":
        raise UnknownRunError(run_id)
    if outcome in ("unknown_step", "not_a_wait_step"):
        raise NotAWaitStepError(
            run_id, row["flow_slug"], step_slug, known_step=outcome == "not_a_wait_step"
        )
    if outcome == "too_late":
        raise SignalTooLateError(run_id, step_slug, row["run_status"], row["step_status"])
    result = SignalResult(
        run_id=run_id,
        step_slug=step_slug,
        outcome=SignalOutcome(outcome),
        signalled_at=row["signalled_at"],
        run_status=RunStatus(row["run_status"]),
        step_status=StepStatus(row["step_status"]),
    )
    telemetry.emit(
        "run.signalled",
        flow=row["flow_slug"],
        run_id=str(run_id),
        step=step_slug,
        outcome=str(result.outcome),
    )
    if result.outcome is SignalOutcome.COMPLETED:
        waited: dict[str, Any] = {}
        if row["waiting_since"] is not None:
            waited = {
                "waiting_since": row["waiting_since"].isoformat(),
                "waited_ms": round(
                    (row["signalled_at"] - row["waiting_since"]).total_seconds() * 1000, 1
                ),
            }
        telemetry.emit(
            "wait.ended",
            flow=row["flow_slug"],
            run_id=str(run_id),
            step=step_slug,
            outcome="signalled",
            **waited,
        )
    return result, str(row["flow_slug"])
