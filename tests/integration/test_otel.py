"""pgflow.otel with the OpenTelemetry SDK's in-memory exporters: span names, attributes and
links, the stored trace context, metrics."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import anyio.to_thread
import pytest
import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

import pgflow.otel
from pgflow import Flow, NonRetryableError, start_flow, step
from pgflow.errors import FlowNotRegisteredError
from tests.helpers.database import register_flows
from tests.helpers.workers import running_worker, wait_until_finished


class Greet(Flow, slug="otel_greet"):
    @step
    def hello(self, name: str) -> str:
        return f"hello {name}"


@dataclass
class Telemetry:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader

    def finished(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.name == name]

    def points(self, metric: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, value) of every data point of ``metric`` collected now."""
        data = self.metrics.get_metrics_data()
        found: list[tuple[dict[str, Any], Any]] = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for item in scope.metrics:
                    if item.name == metric:
                        for point in item.data.data_points:
                            value = getattr(point, "value", None)
                            if value is None:  # a histogram: its count and sum
                                value = (point.count, point.sum)  # type: ignore[union-attr]
                            found.append((dict(point.attributes or {}), value))
        return found


@pytest.fixture
def otel(pgflow_engine: Engine) -> Iterator[Telemetry]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    with pgflow.otel.instrument(
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(metric_readers=[reader]),
        database=pgflow_engine,
    ):
        yield Telemetry(spans, reader)


@pytest.fixture
def engine(pgflow_engine: Engine) -> Engine:
    register_flows(pgflow_engine, Greet)
    return pgflow_engine


def stored_context(engine: Engine, run_id: object) -> dict[str, Any] | None:
    with engine.begin() as connection:
        row = (
            connection.execute(
                sa.text("SELECT * FROM pgflow_python.run_trace_contexts WHERE run_id = :id"),
                {"id": run_id},
            )
            .mappings()
            .one_or_none()
        )
    return None if row is None else dict(row)


def test_start_flow_is_a_span_whose_context_is_stored_with_the_run(
    engine: Engine, otel: Telemetry
) -> None:
    run_id = start_flow(engine, Greet, "Ada")

    [span] = otel.finished("pgflow.start_flow otel_greet")
    assert span.kind is SpanKind.PRODUCER
    assert span.attributes == {"pgflow.flow_slug": "otel_greet", "pgflow.run_id": str(run_id)}
    stored = stored_context(engine, run_id)
    assert stored is not None
    context = span.get_span_context()
    assert context is not None
    assert stored["traceparent"].startswith(f"00-{context.trace_id:032x}-{context.span_id:016x}-")


def test_a_refused_start_is_a_failed_span_and_stores_nothing(
    engine: Engine, otel: Telemetry
) -> None:
    with pytest.raises(FlowNotRegisteredError):
        start_flow(engine, "otel_missing", {})

    [span] = otel.finished("pgflow.start_flow otel_missing")
    assert span.status.status_code is StatusCode.ERROR
    assert [event.name for event in span.events] == ["exception"]


def test_a_rolled_back_start_leaves_no_trace_context(engine: Engine, otel: Telemetry) -> None:
    with Session(engine) as session:
        run_id = start_flow(session, Greet, "Ada")
        session.rollback()

    assert otel.finished("pgflow.start_flow otel_greet") != []
    assert stored_context(engine, run_id) is None


def test_without_instrumentation_no_context_is_stored(engine: Engine) -> None:
    run_id = start_flow(engine, Greet, "Ada")

    assert stored_context(engine, run_id) is None


def test_queue_gauges_count_ready_and_delayed_messages(engine: Engine, otel: Telemetry) -> None:
    for name in ("Ada", "Bob", "Cy"):
        start_flow(engine, Greet, name)
    with engine.begin() as connection:  # one message delayed, as a retry would be
        connection.execute(
            sa.text(
                "SELECT pgmq.set_vt('otel_greet', (SELECT min(msg_id) FROM pgmq.q_otel_greet),"
                " 3600)"
            )
        )

    flow = {"pgflow.flow_slug": "otel_greet"}
    assert otel.points("pgflow.queue.depth") == [(flow, 3)]
    assert otel.points("pgflow.queue.ready") == [(flow, 2)]
    [(_, oldest)] = otel.points("pgflow.queue.oldest_message_age")
    [(_, oldest_ready)] = otel.points("pgflow.queue.oldest_ready_age")
    assert 0 <= oldest_ready <= oldest < 60


CURRENT_SPANS: list[trace.SpanContext] = []


class Traced(Flow, slug="otel_traced", max_attempts=2, base_delay=1):
    @step
    def fetch(self, name: str) -> str:
        # A sync handler runs in a worker thread; the task span is current there too, so the
        # handler's own spans (HTTP calls, queries) become its children.
        CURRENT_SPANS.append(trace.get_current_span().get_span_context())
        return name.upper()

    @step(depends_on=[fetch])
    async def check(self, deps: dict[str, str]) -> None:
        raise NonRetryableError(f"{deps['fetch']} is not allowed")


async def run_traced(engine: Engine) -> uuid.UUID:
    register_flows(engine, Traced)
    async with running_worker(engine, Traced):
        run_id = await anyio.to_thread.run_sync(start_flow, engine, Traced, "ada")
        await wait_until_finished(engine, run_id)
    return run_id


@pytest.mark.anyio
async def test_task_spans_link_to_the_run_start_and_parent_the_handlers_spans(
    pgflow_engine: Engine, otel: Telemetry
) -> None:
    run_id = await run_traced(pgflow_engine)

    [start] = otel.finished("pgflow.start_flow otel_traced")
    [fetch] = otel.finished("pgflow.task otel_traced.fetch")
    [check] = otel.finished("pgflow.task otel_traced.check")
    started_in = start.get_span_context()
    assert started_in is not None
    for task in (fetch, check):
        assert task.kind is SpanKind.CONSUMER
        assert [(link.context.trace_id, link.context.span_id) for link in task.links] == [
            (started_in.trace_id, started_in.span_id)
        ]
        assert task.parent is not None
        assert task.parent.span_id == started_in.span_id  # one trace per run
    assert fetch.attributes == {
        "pgflow.flow_slug": "otel_traced",
        "pgflow.step_slug": "fetch",
        "pgflow.run_id": str(run_id),
        "pgflow.task_index": 0,
        "pgflow.attempt": 1,
        "pgflow.outcome": "completed",
    }
    assert check.attributes is not None
    assert check.attributes["pgflow.outcome"] == "failed"
    assert check.status.status_code is StatusCode.ERROR
    assert check.status.description == "NonRetryableError: ADA is not allowed"
    assert CURRENT_SPANS[-1] == fetch.get_span_context()


@pytest.mark.anyio
async def test_task_and_run_metrics(pgflow_engine: Engine, otel: Telemetry) -> None:
    await run_traced(pgflow_engine)

    outcomes = {
        (attributes["pgflow.step_slug"], attributes["pgflow.outcome"]): value
        for attributes, value in otel.points("pgflow.task.outcomes")
    }
    assert outcomes == {("fetch", "completed"): 1, ("check", "failed"): 1}
    durations = {
        a["pgflow.step_slug"]: count for a, (count, _) in otel.points("pgflow.task.duration")
    }
    assert durations == {"fetch": 1, "check": 1}
    [(attributes, value)] = otel.points("pgflow.run.outcomes")
    assert (attributes, value) == (
        {"pgflow.flow_slug": "otel_traced", "pgflow.outcome": "failed"},
        1,
    )
    [(_, (count, total))] = otel.points("pgflow.run.duration")
    assert count == 1
    assert total > 0


@pytest.mark.anyio
async def test_tasks_of_runs_started_without_tracing_are_root_spans(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Traced)
    run_id = start_flow(pgflow_engine, Traced, "bo")  # not instrumented: no stored context
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    with pgflow.otel.instrument(tracer_provider=provider, meter_provider=MeterProvider()):
        async with running_worker(pgflow_engine, Traced):
            await wait_until_finished(pgflow_engine, run_id)

    [fetch] = [s for s in spans.get_finished_spans() if s.name == "pgflow.task otel_traced.fetch"]
    assert (fetch.parent, list(fetch.links)) == (None, [])
