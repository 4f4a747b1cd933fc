"""OpenTelemetry for pgflow: spans for run starts and task executions, and metrics.

Needs the ``otel`` extra (``pip install 'pgflow-python[otel]'``); nothing in pgflow imports this
module unless asked to. ::

    import pgflow.otel

    pgflow.otel.instrument(database=engine)  # the global tracer and meter providers

- ``pgflow.start_flow <flow>`` (producer) around each run start; its W3C trace context is stored
  with the run, in the statement that starts it.
- ``pgflow.task <flow>.<step>`` (consumer) around each handler execution, in whichever worker
  process runs it: linked to the run's start span and, by default, its child, so a run's tasks
  form one trace. Handler code's own spans are children of the task span.
- ``pgflow.signal <step>`` (producer) around each ``signal()`` call, in the caller's context.
- ``pgflow.wait <flow>.<step>`` (internal) for each wait step's wait, from its begin to its end,
  in the run's trace, with the events ``pgflow.wait.begin`` and ``pgflow.wait.<outcome>``
  (``signalled``, ``timed_out``, ``abandoned``); recorded by whoever ends it (the signal's
  caller, linked to its signal span; the worker's deadline sweep).
- Metrics: ``pgflow.task.duration`` (s) and ``pgflow.task.outcomes`` by flow, step and outcome;
  ``pgflow.run.duration`` (s) and ``pgflow.run.outcomes`` by flow and outcome (from the worker
  whose report ended the run); with ``database=``, the gauges ``pgflow.queue.depth``,
  ``pgflow.queue.ready``, ``pgflow.queue.oldest_message_age`` (s) and
  ``pgflow.queue.oldest_ready_age`` (s) by flow.

See docs/observability.md for attributes, outcomes and the Prometheus endpoint.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as missing:  # pragma: no cover - depends on the installation
    raise ImportError(
        "pgflow.otel needs OpenTelemetry: pip install 'pgflow-python[otel]'"
    ) from missing

import psycopg
from psycopg.rows import dict_row
from sqlalchemy.engine import URL, Engine

from pgflow import _sql, _tracing, telemetry
from pgflow._db import conninfo

__all__ = [
    "ATTRIBUTES",
    "Instrumentation",
    "instrument",
    "serve_prometheus",
]

SCOPE = "pgflow"
ATTR_FLOW = "pgflow.flow_slug"
ATTR_STEP = "pgflow.step_slug"
ATTR_RUN = "pgflow.run_id"
ATTR_TASK_INDEX = "pgflow.task_index"
ATTR_ATTEMPT = "pgflow.attempt"
ATTR_OUTCOME = "pgflow.outcome"
ATTR_WAITS_FOR = "pgflow.waits_for"
ATTR_CHILD_FLOW = "pgflow.child_flow_slug"
ATTR_CHILD_RUN = "pgflow.child_run_id"
ATTRIBUTES = (
    ATTR_FLOW,
    ATTR_STEP,
    ATTR_RUN,
    ATTR_TASK_INDEX,
    ATTR_ATTEMPT,
    ATTR_OUTCOME,
    ATTR_WAITS_FOR,
)
"""The attribute names on pgflow's spans (metrics use flow, step and outcome only)."""

_PROPAGATOR = TraceContextTextMapPropagator()


class _StartSpan:
    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def carrier(self) -> _tracing.Carrier:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(self._span))
        return carrier

    def started(self, run_id: uuid.UUID) -> None:
        self._span.set_attribute(ATTR_RUN, str(run_id))


class _TaskSpan:
    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def finished(self, outcome: str, error: str | None = None) -> None:
        self._span.set_attribute(ATTR_OUTCOME, outcome)
        if error is not None:
            self._span.set_status(trace.Status(trace.StatusCode.ERROR, error))


class _SignalSpan:
    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def carrier(self) -> _tracing.Carrier:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(self._span))
        return carrier

    def finished(self, outcome: str, flow_slug: str) -> None:
        self._span.set_attribute(ATTR_OUTCOME, outcome)
        self._span.set_attribute(ATTR_FLOW, flow_slug)


def _nanoseconds(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


class _Tracer:
    """pgflow's tracing seam (:mod:`pgflow._tracing`) implemented with OpenTelemetry."""

    def __init__(self, tracer: trace.Tracer, *, one_trace_per_run: bool) -> None:
        self._tracer = tracer
        self._one_trace_per_run = one_trace_per_run

    @contextmanager
    def start_flow(self, flow_slug: str) -> Iterator[_StartSpan]:
        with self._tracer.start_as_current_span(
            f"pgflow.start_flow {flow_slug}",
            kind=trace.SpanKind.PRODUCER,
            attributes={ATTR_FLOW: flow_slug},
        ) as span:
            yield _StartSpan(span)

    @contextmanager
    def task(
        self, task: _tracing.TaskAttempt, run_context: _tracing.Carrier | None
    ) -> Iterator[_TaskSpan]:
        parent, links = self._in_run(run_context)
        with self._tracer.start_as_current_span(
            f"pgflow.task {task.flow_slug}.{task.step_slug}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes={
                ATTR_FLOW: task.flow_slug,
                ATTR_STEP: task.step_slug,
                ATTR_RUN: str(task.run_id),
                ATTR_TASK_INDEX: task.task_index,
                ATTR_ATTEMPT: task.attempt,
            },
        ) as span:
            yield _TaskSpan(span)

    def _in_run(
        self, run_context: _tracing.Carrier | None
    ) -> tuple[otel_context.Context, list[trace.Link]]:
        """The parent and links of a span of a run's work: never the current context (a task
        or a wait belongs to its run, not to whatever span the process happens to be in)."""
        parent = otel_context.Context()
        links: list[trace.Link] = []
        if run_context:
            extracted = _PROPAGATOR.extract(run_context)
            started_in = trace.get_current_span(extracted).get_span_context()
            if started_in.is_valid:
                links.append(trace.Link(started_in))
                if self._one_trace_per_run:
                    parent = extracted
        return parent, links

    @contextmanager
    def signal(self, run_id: uuid.UUID, step_slug: str) -> Iterator[_SignalSpan]:
        with self._tracer.start_as_current_span(
            f"pgflow.signal {step_slug}",
            kind=trace.SpanKind.PRODUCER,
            attributes={ATTR_RUN: str(run_id), ATTR_STEP: step_slug},
        ) as span:
            yield _SignalSpan(span)

    def wait_ended(self, wait: _tracing.EndedWait, cause: _tracing.Carrier | None = None) -> None:
        parent, links = self._in_run(wait.run_context)
        if cause:
            ended_by = trace.get_current_span(_PROPAGATOR.extract(cause)).get_span_context()
            if ended_by.is_valid:
                links.append(trace.Link(ended_by, {"pgflow.link": "ended_by"}))
        attributes: dict[str, str | int] = {
            ATTR_FLOW: wait.flow_slug,
            ATTR_STEP: wait.step_slug,
            ATTR_RUN: str(wait.run_id),
            ATTR_TASK_INDEX: wait.task_index,
            ATTR_WAITS_FOR: wait.waits_for,
            ATTR_OUTCOME: wait.outcome,
        }
        # A subflow's child run: its own span name, and a link to the child's trace.
        kind = "pgflow.wait"
        if wait.child_run_id is not None:
            kind = "pgflow.subflow"
            attributes[ATTR_CHILD_FLOW] = wait.child_flow_slug or ""
            attributes[ATTR_CHILD_RUN] = str(wait.child_run_id)
            if wait.child_context:
                child = _PROPAGATOR.extract(wait.child_context)
                child_started_in = trace.get_current_span(child).get_span_context()
                if child_started_in.is_valid:
                    links.append(trace.Link(child_started_in, {"pgflow.link": "child_run"}))
        began = _nanoseconds(wait.began_at)
        ended = max(_nanoseconds(wait.ended_at), began)
        span = self._tracer.start_span(
            f"{kind} {wait.flow_slug}.{wait.step_slug}",
            context=parent,
            kind=trace.SpanKind.INTERNAL,
            links=links,
            start_time=began,
            attributes=attributes,
        )
        span.add_event(f"{kind}.begin", timestamp=began)
        span.add_event(f"{kind}.{wait.outcome}", timestamp=ended)
        span.end(end_time=ended)


class _Metrics:
    """Instruments fed by pgflow's events (a :func:`pgflow.telemetry.subscribe` hook)."""

    def __init__(self, meter: metrics.Meter) -> None:
        self.task_duration = meter.create_histogram(
            "pgflow.task.duration", unit="s", description="Handler run time of task attempts."
        )
        self.task_outcomes = meter.create_counter(
            "pgflow.task.outcomes",
            unit="{task}",
            description="Task attempts by outcome: completed, retried (failed, a retry "
            "follows), failed (no retry follows) or skipped (no retry follows and the step is "
            "skipped: retries_exhausted).",
        )
        self.run_duration = meter.create_histogram(
            "pgflow.run.duration", unit="s", description="Time from a run's start to its end."
        )
        self.run_outcomes = meter.create_counter(
            "pgflow.run.outcomes", unit="{run}", description="Runs ended: completed or failed."
        )

    def __call__(self, event: str, fields: dict[str, Any]) -> None:
        if event == "task.completed":
            self._task(fields, "completed")
        elif event == "task.failed":
            if fields.get("step_skipped"):
                outcome = "skipped"  # out of attempts, retries_exhausted="skip"
            else:
                outcome = "retried" if fields.get("retry_at") is not None else "failed"
            self._task(fields, outcome)
        elif event in ("run.completed", "run.failed") and "duration_ms" in fields:
            attributes = {ATTR_FLOW: fields["flow"], ATTR_OUTCOME: event.partition(".")[2]}
            self.run_outcomes.add(1, attributes)
            self.run_duration.record(fields["duration_ms"] / 1000, attributes)

    def _task(self, fields: dict[str, Any], outcome: str) -> None:
        attributes = {ATTR_FLOW: fields["flow"], ATTR_STEP: fields["step"], ATTR_OUTCOME: outcome}
        self.task_outcomes.add(1, attributes)
        if "duration_ms" in fields:
            self.task_duration.record(fields["duration_ms"] / 1000, attributes)


@dataclass(frozen=True, slots=True)
class _QueueSample:
    flow_slug: str
    messages: int
    ready_messages: int
    oldest_ready_seconds: float
    oldest_message_seconds: float
    waiting_on_limit: int = 0
    waiting_on_rate: int = 0


class _QueueGauges:
    """Queue figures read at collection time (a scrape, a periodic export) on a connection of
    their own: one query serves all the gauges of one collection."""

    MAX_AGE = 0.25
    """Seconds a sample serves the other gauges' callbacks (of the same collection)."""

    def __init__(self, meter: metrics.Meter, database: Engine | URL | str) -> None:
        self._conninfo = conninfo(database.url if isinstance(database, Engine) else database)
        self._lock = threading.Lock()
        self._connection: psycopg.Connection[dict[str, Any]] | None = None
        self._sample: list[_QueueSample] = []
        self._sampled_at = -float("inf")
        gauges = {
            "pgflow.queue.depth": (
                "{message}",
                "Messages in the flow's queue (ready, in flight or delayed).",
                "messages",
            ),
            "pgflow.queue.ready": (
                "{message}",
                "Messages a worker could claim now.",
                "ready_messages",
            ),
            "pgflow.queue.oldest_message_age": (
                "s",
                "Age of the queue's oldest message.",
                "oldest_message_seconds",
            ),
            "pgflow.queue.oldest_ready_age": (
                "s",
                "How long the oldest claimable message has waited (0: none).",
                "oldest_ready_seconds",
            ),
            "pgflow.queue.waiting_on_limit": (
                "{task}",
                "Tasks held for a concurrency limit's slot (docs/flow-control.md).",
                "waiting_on_limit",
            ),
            "pgflow.queue.waiting_on_rate": (
                "{task}",
                "Task starts booked for later by a rate limit's budget.",
                "waiting_on_rate",
            ),
        }
        for name, (unit, description, field) in gauges.items():
            meter.create_observable_gauge(
                name, callbacks=[self._callback(field)], unit=unit, description=description
            )

    def _callback(
        self, field: str
    ) -> Any:  # metrics.CallbackT, whose generic form mypy cannot check here
        def observe(_options: metrics.CallbackOptions) -> Iterable[metrics.Observation]:
            return [
                metrics.Observation(getattr(sample, field), {ATTR_FLOW: sample.flow_slug})
                for sample in self._read()
            ]

        return observe

    def _read(self) -> list[_QueueSample]:
        with self._lock:
            if time.monotonic() - self._sampled_at > self.MAX_AGE:
                self._sample = self._query()
                self._sampled_at = time.monotonic()
            return self._sample

    def _query(self) -> list[_QueueSample]:
        try:
            if self._connection is None or self._connection.closed:
                self._connection = psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    row_factory=dict_row,
                    application_name="pgflow-otel:queue-metrics",
                    connect_timeout=5,
                    # Never prepared: one small query per collection, and it may go through a
                    # transaction pooler (or to a replica behind one).
                    prepare_threshold=None,
                )
            rows = self._connection.execute(_sql.psycopg_text("otel_queue_metrics")).fetchall()
        except psycopg.Error as exc:
            # A metrics collection must never fail the exporter; the gauges skip this round.
            telemetry.emit("metrics.queue_query_failed", level=logging.WARNING, error=str(exc))
            self.close_unlocked()
            return []
        return [_QueueSample(**row) for row in rows]

    def close_unlocked(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = None

    def close(self) -> None:
        with self._lock:
            self.close_unlocked()


class Instrumentation:
    """What :func:`instrument` enabled; :meth:`uninstrument` (or leaving a ``with`` block)
    turns it off again."""

    def __init__(
        self,
        tracer: _Tracer,
        unsubscribe: Any,
        gauges: _QueueGauges | None,
    ) -> None:
        self._tracer = tracer
        self._unsubscribe = unsubscribe
        self._gauges = gauges

    def uninstrument(self) -> None:
        global _active  # noqa: PLW0603 - the process-wide instrumentation, as in install()
        if _tracing.current() is self._tracer:
            _tracing.install(None)
        self._unsubscribe()
        if self._gauges is not None:
            self._gauges.close()
        if _active is self:
            _active = None

    def __enter__(self) -> Instrumentation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.uninstrument()


_active: Instrumentation | None = None


def instrument(
    *,
    tracer_provider: trace.TracerProvider | None = None,
    meter_provider: metrics.MeterProvider | None = None,
    database: Engine | URL | str | None = None,
    one_trace_per_run: bool = True,
) -> Instrumentation:
    """Trace run starts and task executions and record pgflow's metrics, in this process.

    Providers default to OpenTelemetry's global ones. ``database`` (an engine or URL) adds the
    queue gauges, read on a connection of their own whenever metrics are collected.
    ``one_trace_per_run=False`` makes each task span the root of its own trace, linked (not
    parented) to the run's start. A second call replaces the first.
    """
    global _active  # noqa: PLW0603 - one instrumentation per process, like the providers
    if _active is not None:
        _active.uninstrument()
    from pgflow import __version__  # noqa: PLC0415 - pgflow/__init__ imports the client

    tracer = _Tracer(
        trace.get_tracer(SCOPE, __version__, tracer_provider=tracer_provider),
        one_trace_per_run=one_trace_per_run,
    )
    meter = metrics.get_meter(SCOPE, __version__, meter_provider=meter_provider)
    unsubscribe = telemetry.subscribe(_Metrics(meter))
    gauges = None if database is None else _QueueGauges(meter, database)
    _tracing.install(tracer)
    _active = Instrumentation(tracer, unsubscribe, gauges)
    return _active


def serve_prometheus(port: int, *, addr: str = "127.0.0.1") -> metrics.MeterProvider:
    """Serve metrics for Prometheus at ``http://addr:port/metrics``; returns the meter provider
    to pass to :func:`instrument` (needs the SDK and the Prometheus exporter: the otel extra).
    The endpoint has no authentication: it binds loopback unless ``addr`` says otherwise
    (``"0.0.0.0"`` in a container scraped from outside), as ``--metrics-host`` does."""
    from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from prometheus_client import start_http_server  # noqa: PLC0415

    start_http_server(port, addr=addr)
    return MeterProvider(metric_readers=[PrometheusMetricReader()])
