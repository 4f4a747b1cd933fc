"""``python -m bench.otel_overhead``: the worker CPU that pgflow.otel adds per task, measured in
this process without a database: the task span (with a link to a stored start context) and the
events that feed the metrics, with the SDK set up and exporters that drop the data."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import pgflow.otel
from pgflow import _tracing, telemetry

TASKS = 20_000
STARTED_IN = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


class DroppedSpans(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


def cpu_ms_per_task() -> float:
    """What the worker does around each task for telemetry, TASKS times; CPU ms per task."""
    tracer = _tracing.current()
    started = time.process_time()
    for _ in range(TASKS):
        fields: dict[str, Any] = {"flow": "f", "step": "s", "run_id": "r", "task_index": 0}
        telemetry.emit("task.started", **fields)
        if tracer is not None:
            attempt = _tracing.TaskAttempt("f", "s", uuid.uuid4(), 0, 1)
            with tracer.task(attempt, STARTED_IN) as span:
                span.finished("completed")
        telemetry.emit("task.completed", duration_ms=1.0, **fields)
    return (time.process_time() - started) / TASKS * 1000


def main() -> None:
    off = min(cpu_ms_per_task() for _ in range(3))
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DroppedSpans()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    with pgflow.otel.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider):
        on = min(cpu_ms_per_task() for _ in range(3))
    tracer_provider.shutdown()
    print(f"CPU per task: {off:.4f} ms without OpenTelemetry, {on:.4f} ms with it")


if __name__ == "__main__":
    main()
