"""pgflow-python under the benchmark workloads (bench/flows.py holds the flows).

Worker process: ``python -m bench.systems.pgflow_system worker <url> [--concurrency N]
[--batch-size N] [--otel] [--listen-url URL]``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import psycopg
import sqlalchemy as sa
import structlog

from bench import flows
from bench._api import Adapter, Drain, Timed
from bench._process import WorkerProcess, analyze_filled_tables, measured_drain, wait_until
from pgflow import start_flow, start_flow_and_wait, telemetry, wait_for_run
from pgflow._db import create_engine
from pgflow.compiler import compile_flow
from pgflow.dsl import definition_of
from pgflow.schema import install
from pgflow.worker import Worker, WorkerOptions

MODULE = "bench.systems.pgflow_system"
CONCURRENCY, BATCH_SIZE = 100, 50
COMPLETED_RUNS = "SELECT count(*) FROM pgflow.runs WHERE flow_slug = %s AND status = 'completed'"
# The flows are started by SQL in one statement, as an application bulk-starting runs would.
START_RUNS = (
    "SELECT count(*) FROM generate_series(1, %(runs)s) AS n,"
    " LATERAL pgflow.start_flow(%(slug)s, jsonb_build_object('n', n))"
)


def engine_for(url: str) -> sa.Engine:
    # pgflow's own engine factory: it understands ?pool_mode=transaction (the PgBouncer runs).
    return create_engine(url)


START_CHUNK = 5_000


def start_runs(url: str, slug: str, runs: int) -> None:
    """Start runs in statements of START_CHUNK, analyzing filled tables in between: in one huge
    statement, start_flow's cached plans would keep assuming the tables as small as they were
    (quadratic: 100,000 runs did not finish in 10 minutes), and autovacuum is off here."""
    left = runs
    with psycopg.connect(url, autocommit=True) as connection:
        while left > 0:
            connection.execute(START_RUNS, {"runs": min(left, START_CHUNK), "slug": slug})
            left -= START_CHUNK
            if left > 0:
                analyze_filled_tables(url)


class PgflowAdapter(Adapter):
    name = "pgflow-python"
    settings = (
        f"one worker process, concurrency {CONCURRENCY}, batch {BATCH_SIZE} (defaults: 10, 10), "
        "async handlers, NOTIFY wake-ups, scheduler on (as users run it), log level warning"
    )

    def install(self, url: str) -> None:
        engine = engine_for(url)
        install(engine)
        with engine.begin() as connection:
            for flow in flows.ALL:
                for statement in compile_flow(definition_of(flow)):
                    connection.execute(sa.text(statement))
        engine.dispose()

    worker_args: tuple[str, ...] = ()

    def _worker(self, url: str) -> WorkerProcess:
        return WorkerProcess(MODULE, "worker", self.served_url(url), *self.worker_args_for(url))

    def served_url(self, url: str) -> str:
        """The URL the worker and the client's starts use (the direct one here)."""
        return url

    def worker_args_for(self, url: str) -> tuple[str, ...]:
        return self.worker_args

    def drain(self, url: str, jobs: int, backlog: int) -> Drain:
        start_runs(url, definition_of(flows.Noop).slug, jobs + backlog)
        analyze_filled_tables(url)
        with self._worker(url) as worker:
            return measured_drain(
                worker, url, COMPLETED_RUNS, [definition_of(flows.Noop).slug], jobs
            )

    def sequential_flows(self, url: str, runs: int) -> Timed:
        with self._worker(url):
            started = time.perf_counter()
            start_runs(url, definition_of(flows.Chain).slug, runs)
            done = wait_until(
                url,
                COMPLETED_RUNS,
                [definition_of(flows.Chain).slug],
                lambda n: n >= runs,
                timeout=3600,
            )
        return Timed(runs, done - started)

    def map_fan_in(self, url: str, elements: int) -> Timed:
        engine = engine_for(url)
        with self._worker(url):
            started = time.perf_counter()
            run = start_flow_and_wait(engine, flows.FanOut, {"elements": elements}, timeout=3600)
            finished = time.perf_counter()
        engine.dispose()
        assert run.output == {"total": sum(x * x for x in range(elements))}, run
        return Timed(elements, finished - started)

    def latency(self, url: str, samples: int) -> list[float]:
        starts, waits = engine_for(self.served_url(url)), engine_for(url)
        timings = []
        with self._worker(url):
            for _ in range(samples):
                started = time.perf_counter()
                if self.served_url(url) == url:
                    start_flow_and_wait(waits, flows.Ping, {}, timeout=60)
                else:
                    # Started through the pooler, waited for on a direct connection (LISTEN).
                    wait_for_run(waits, start_flow(starts, flows.Ping, {}), timeout=60)
                timings.append(1000 * (time.perf_counter() - started))
        starts.dispose()
        waits.dispose()
        return timings


class PgflowOtelAdapter(PgflowAdapter):
    """The same worker with OpenTelemetry on: what tracing and metrics cost per task."""

    name = "pgflow-python-otel"
    settings = (
        PgflowAdapter.settings
        + "; OpenTelemetry SDK on (pgflow.otel.instrument): task spans through a batch span "
        "processor, metrics through a 10 s periodic reader with queue gauges, both exported to "
        "exporters that drop the data"
    )
    worker_args = ("--otel",)


def instrument_with_sdk(url: str) -> None:
    """The OpenTelemetry SDK as an application would set it up, minus the network: spans and
    metrics are produced, batched and exported, and the exporters drop them."""
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
        MetricExporter,
        MetricExportResult,
        MetricsData,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    import pgflow.otel  # noqa: PLC0415

    class DroppedSpans(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    class DroppedMetrics(MetricExporter):
        def export(
            self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
        ) -> MetricExportResult:
            return MetricExportResult.SUCCESS

        def force_flush(self, timeout_millis: float = 10_000) -> bool:
            return True

        def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
            pass

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(DroppedSpans()))
    reader = PeriodicExportingMetricReader(DroppedMetrics(), export_interval_millis=10_000)
    pgflow.otel.instrument(
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(metric_readers=[reader]),
        database=url,
    )


def serve(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE} worker")
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    parser.add_argument("--otel", action="store_true", help="OpenTelemetry on")
    parser.add_argument("--listen-url", help="direct URL for LISTEN (worker behind a pooler)")
    args = parser.parse_args(argv)
    if args.otel:
        instrument_with_sdk(args.url)
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )

    def announce(event: str, fields: dict[str, Any]) -> None:
        if event == "worker.started":
            print("ready", flush=True)

    telemetry.subscribe(announce)
    # As users run it: the scheduler (like every other service) on, whatever the defaults become.
    options = WorkerOptions(
        concurrency=args.concurrency,
        batch_size=args.batch_size,
        listen_url=args.listen_url,
        scheduler=True,
    )
    Worker(flows.ALL, engine_for(args.url), options=options).run()


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit(f"usage: python -m {MODULE} worker <url> [options]")
    serve(sys.argv[2:])
