"""The seam between pgflow and a tracing implementation, with no tracing library imported.

The client and the worker call :func:`current`; it is ``None`` until an implementation is
installed (``pgflow.otel.instrument()`` installs OpenTelemetry's), so uninstrumented code pays one
global read per run start and per task.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

Carrier = Mapping[str, str]
"""W3C trace context headers: ``traceparent`` and optionally ``tracestate``."""


@dataclass(frozen=True, slots=True)
class TaskAttempt:
    flow_slug: str
    step_slug: str
    run_id: uuid.UUID
    task_index: int
    attempt: int


class StartSpan(Protocol):
    def carrier(self) -> Carrier:
        """The span's context, to be stored with the run (empty: nothing to store)."""

    def started(self, run_id: uuid.UUID) -> None:
        """The run exists (in the caller's transaction)."""


class TaskSpan(Protocol):
    def finished(self, outcome: str, error: str | None = None) -> None:
        """The handler's outcome (``completed``, ``failed``, ``timed_out``...)."""


class Tracer(Protocol):
    def start_flow(self, flow_slug: str) -> AbstractContextManager[StartSpan]:
        """A span around starting one run; an exception leaving it marks the span failed."""

    def task(
        self, task: TaskAttempt, run_context: Carrier | None
    ) -> AbstractContextManager[TaskSpan]:
        """A span around one handler execution, linked to the run's stored context. The span
        is current while the handler runs, so the handler's own spans are its children."""


def carriers_by_run(rows: Iterable[Mapping[str, Any]]) -> dict[uuid.UUID, Carrier]:
    """Stored trace contexts (rows of the ``otel_run_trace_contexts`` query) by run id."""
    contexts: dict[uuid.UUID, Carrier] = {}
    for row in rows:
        carrier = {"traceparent": row["traceparent"]}
        if row["tracestate"]:
            carrier["tracestate"] = row["tracestate"]
        contexts[row["run_id"]] = carrier
    return contexts


_tracer: Tracer | None = None


def current() -> Tracer | None:
    return _tracer


def install(tracer: Tracer | None) -> Tracer | None:
    """Make ``tracer`` current (``None``: none); returns the one it replaces."""
    global _tracer  # one process-wide switch, like logging's configuration
    previous, _tracer = _tracer, tracer
    return previous
