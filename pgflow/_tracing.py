"""The seam between pgflow and a tracing implementation, with no tracing library imported.

The client and the worker call :func:`current`; it is ``None`` until an implementation is
installed (``pgflow.otel.instrument()`` installs OpenTelemetry's), so uninstrumented code pays one
global read per run start and per task.

Waits (wait steps, and any other step that waits in the database) begin inside SQL, where no
pgflow process takes part; they are traced when they end, by whoever ends them (the signal's
caller, the worker's deadline sweep): :func:`record_ended_waits` reads the ended waits and the
tracer draws each as a span from its begin to its end, in its run's trace. A subflow step's
child run is drawn the same way, from the child's start to its end, in the parent run's trace:
:func:`record_ended_children`, called by the worker that logs the child's end.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.engine import Connection

from pgflow._sql import query

Carrier = Mapping[str, str]
"""W3C trace context headers: ``traceparent`` and optionally ``tracestate``."""


@dataclass(frozen=True, slots=True)
class TaskAttempt:
    flow_slug: str
    step_slug: str
    run_id: uuid.UUID
    task_index: int
    attempt: int


@dataclass(frozen=True, slots=True)
class EndedWait:
    """A wait that ended: a row of the ``otel_ended_waits`` query.

    ``waits_for`` is what it waited for (``signal``; ``subflow``: a child run, a row of the
    ``otel_ended_children`` query) and ``outcome`` how it ended (``signalled``, ``timed_out``,
    ``abandoned``: its run ended; a child: ``completed``, ``failed``, ``cancelled``). A child
    run's wait begins when the child started and names the child, with its own stored trace
    context (``child_context``) when it has one."""

    flow_slug: str
    step_slug: str
    run_id: uuid.UUID
    task_index: int
    waits_for: str
    began_at: datetime
    ended_at: datetime
    outcome: str
    run_context: Carrier | None
    child_flow_slug: str | None = None
    child_run_id: uuid.UUID | None = None
    child_context: Carrier | None = None


class StartSpan(Protocol):
    def carrier(self) -> Carrier:
        """The span's context, to be stored with the run (empty: nothing to store)."""

    def started(self, run_id: uuid.UUID) -> None:
        """The run exists (in the caller's transaction)."""


class TaskSpan(Protocol):
    def finished(self, outcome: str, error: str | None = None) -> None:
        """The handler's outcome (``completed``, ``failed``, ``timed_out``...)."""


class SignalSpan(Protocol):
    def carrier(self) -> Carrier:
        """The span's context, linked from the span of the wait it ends."""

    def finished(self, outcome: str, flow_slug: str) -> None:
        """What the signal did (``completed``, ``kept``, ``already_signalled``)."""


class Tracer(Protocol):
    def start_flow(self, flow_slug: str) -> AbstractContextManager[StartSpan]:
        """A span around starting one run; an exception leaving it marks the span failed."""

    def task(
        self, task: TaskAttempt, run_context: Carrier | None
    ) -> AbstractContextManager[TaskSpan]:
        """A span around one handler execution, linked to the run's stored context. The span
        is current while the handler runs, so the handler's own spans are its children."""

    def signal(self, run_id: uuid.UUID, step_slug: str) -> AbstractContextManager[SignalSpan]:
        """A span around one signal, in the caller's context; an exception leaving it (the
        signal was refused) marks it failed."""

    def wait_ended(self, wait: EndedWait, cause: Carrier | None = None) -> None:
        """Record ``wait`` as a span from its begin to its end, in its run's trace, linked to
        ``cause`` (the span that ended it, when one did) and to the child run's trace (a
        subflow's child, when it has one)."""


def carriers_by_run(rows: Iterable[Mapping[str, Any]]) -> dict[uuid.UUID, Carrier]:
    """Stored trace contexts (rows of the ``otel_run_trace_contexts`` query) by run id."""
    contexts: dict[uuid.UUID, Carrier] = {}
    for row in rows:
        carrier = {"traceparent": row["traceparent"]}
        if row["tracestate"]:
            carrier["tracestate"] = row["tracestate"]
        contexts[row["run_id"]] = carrier
    return contexts


def _carrier(traceparent: str | None, tracestate: str | None) -> Carrier | None:
    if not traceparent:
        return None
    return {"traceparent": traceparent, **({"tracestate": tracestate} if tracestate else {})}


def _record(
    connection: Connection, query_name: str, keys: dict[str, list[Any]], cause: Carrier | None
) -> None:
    tracer = current()
    if tracer is None or not next(iter(keys.values())):
        return
    for row in connection.execute(query(query_name), keys).mappings():
        child_run_id = row["child_run_id"]
        tracer.wait_ended(
            EndedWait(
                flow_slug=row["flow_slug"],
                step_slug=row["step_slug"],
                run_id=row["run_id"],
                task_index=row["task_index"],
                waits_for=row["waits_for"],
                began_at=row["waiting_since"],
                ended_at=row["ended_at"],
                outcome=row["outcome"],
                run_context=_carrier(row["traceparent"], row["tracestate"]),
                child_flow_slug=row["child_flow_slug"],
                child_run_id=child_run_id,
                child_context=_carrier(row["child_traceparent"], row["child_tracestate"]),
            ),
            cause,
        )


def record_ended_waits(
    connection: Connection,
    ended: Sequence[tuple[uuid.UUID, str]],
    cause: Carrier | None = None,
) -> None:
    """Trace the waits of ``ended`` ((run_id, step_slug) pairs) that have ended, on
    ``connection`` (in the transaction that ended them, or after it). Nothing is read when no
    tracer is installed or nothing ended."""
    _record(
        connection,
        "otel_ended_waits",
        {"run_ids": [run_id for run_id, _ in ended], "step_slugs": [step for _, step in ended]},
        cause,
    )


def record_ended_children(
    connection: Connection, ended: Sequence[tuple[uuid.UUID, str, int]]
) -> None:
    """Trace the ended child runs of subflow tasks ``ended`` ((run_id, step_slug, task_index)
    of the parent), each as a wait from the child's start to its end in the parent's trace. Like
    :func:`record_ended_waits`, nothing is read when no tracer is installed or nothing ended."""
    _record(
        connection,
        "otel_ended_children",
        {
            "run_ids": [run_id for run_id, _, _ in ended],
            "step_slugs": [step for _, step, _ in ended],
            "task_indexes": [index for _, _, index in ended],
        },
        None,
    )


_tracer: Tracer | None = None


def current() -> Tracer | None:
    return _tracer


def install(tracer: Tracer | None) -> Tracer | None:
    """Make ``tracer`` current (``None``: none); returns the one it replaces."""
    global _tracer  # one process-wide switch, like logging's configuration
    previous, _tracer = _tracer, tracer
    return previous
