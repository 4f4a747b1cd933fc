"""``python -m bench.waits``: P10, what waiting runs cost (docs/performance.md, docs/waiting.md).

1. P1 with and without 10,000 runs waiting for a signal in the same database: the same worker
   process (as ``python -m bench`` runs it) drains the same jobs; the ratio of the two rates says
   what the waits cost it. The waits have a timeout (a day), so the worker's deadline sweep has
   them to look at, as it would in production.
2. Signal latency with those 10,000 runs waiting and the worker idle: one signal at a time,
   from the signal's commit to the next step's task started by the worker (both database
   clock: ``pgflow_python.signals.received_at`` → ``step_tasks.started_at``), and as the client
   sees it (``signal`` then ``wait_for_run`` until the run completed); next to P4's
   start-and-wait (``start_flow_and_wait`` of a no-op job) measured on the same worker and
   database just before.

Options: ``--waiting 10000 --jobs 10000 --samples 200 --repetitions 3``; ``--scale 0.1`` for a
quick run. The server is DATABASE_URL's (else 127.0.0.1:5432); one scratch database per
measurement, dropped afterwards. Worker: ``python -m bench.waits worker <url>``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from datetime import timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
import structlog

from bench import flows
from bench.__main__ import drop_database, fresh_database
from bench._machine import Probe
from bench._process import WorkerProcess, analyze_filled_tables, measured_drain, wait_until
from bench.systems.pgflow_system import (
    BATCH_SIZE,
    COMPLETED_RUNS,
    CONCURRENCY,
    engine_for,
    start_runs,
)
from pgflow import Flow, signal, start_flow_and_wait, step, telemetry, wait_for_run, wait_step
from pgflow.compiler import compile_flow
from pgflow.dsl import definition_of
from pgflow.schema import install
from pgflow.worker import Worker, WorkerOptions

MODULE = "bench.waits"


class Approval(Flow, slug="bench_approval"):
    """Waits from its start (a root wait step); the signal's output goes to the next step."""

    @wait_step(timeout=timedelta(days=1))
    def approval(self) -> None: ...

    @step(depends_on=[approval])
    async def after(self, deps: dict[str, Any]) -> Any:
        return deps["approval"]


SERVED: list[type[Flow]] = [*flows.ALL, Approval]
WAITING_RUNS = "SELECT count(*) FROM pgflow_python.waits WHERE ended_at IS NULL"
SIGNAL_TO_STARTED = """
SELECT 1000 * extract(epoch FROM t.started_at - s.received_at)
FROM pgflow_python.signals AS s
JOIN pgflow.step_tasks AS t ON t.run_id = s.run_id AND t.step_slug = 'after'
WHERE s.run_id = ANY(%s)
"""


def prepare(url: str, waiting: int) -> None:
    engine = engine_for(url)
    install(engine)
    with engine.begin() as connection:
        for flow in SERVED:
            for statement in compile_flow(definition_of(flow)):
                connection.execute(sa.text(statement))
    engine.dispose()
    if waiting:
        start_runs(url, definition_of(Approval).slug, waiting)
        wait_until(url, WAITING_RUNS, [], lambda n: n >= waiting, timeout=600)
    analyze_filled_tables(url)


def drain_rate(url: str, jobs: int) -> tuple[float, float]:
    """P1: jobs per second and worker CPU ms per job."""
    slug = definition_of(flows.Noop).slug
    start_runs(url, slug, jobs)
    analyze_filled_tables(url)
    with WorkerProcess(MODULE, "worker", url) as worker:
        drained = measured_drain(worker, url, COMPLETED_RUNS, [slug], jobs)
    return drained.rate, drained.cpu_ms_per_job


def quantiles(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.99 * len(ordered)))]


def latencies(url: str, samples: int) -> dict[str, tuple[float, float]]:
    """P4 start-and-wait, then signal → next step started and signal → run completed (ms)."""
    engine = engine_for(url)
    with psycopg.connect(url, autocommit=True) as connection:
        targets = [
            row[0]
            for row in connection.execute(
                "SELECT run_id FROM pgflow_python.waits WHERE ended_at IS NULL"
                " ORDER BY random() LIMIT %s",
                [samples],
            )
        ]
    p4: list[float] = []
    client: list[float] = []
    with WorkerProcess(MODULE, "worker", url):
        start_flow_and_wait(engine, flows.Ping, {}, timeout=60)  # warm: connections, plans
        for _ in range(samples):
            started = time.perf_counter()
            start_flow_and_wait(engine, flows.Ping, {}, timeout=60)
            p4.append(1000 * (time.perf_counter() - started))
        for run_id in targets:
            started = time.perf_counter()
            signal(engine, run_id, "approval", {"approved": True})
            wait_for_run(engine, run_id, timeout=60)
            client.append(1000 * (time.perf_counter() - started))
    with psycopg.connect(url, autocommit=True) as connection:
        database = [float(row[0]) for row in connection.execute(SIGNAL_TO_STARTED, [targets])]
    engine.dispose()
    assert len(database) == len(targets), "a signalled run's next step never started"
    return {
        "P4 start-and-wait": quantiles(p4),
        "signal -> next step started (database clock)": quantiles(database),
        "signal -> run completed (client)": quantiles(client),
    }


def uptime() -> str:
    """What ``uptime`` says of the load: the 1, 5 and 15-minute load averages and the cores."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__)
    parser.add_argument("--waiting", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument(
        "--server",
        default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args(argv)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    waiting, jobs, samples = (
        max(1, round(n * args.scale)) for n in (args.waiting, args.jobs, args.samples)
    )
    database = f"bench_waits_{os.getpid()}"
    print(f"machine before: {uptime()}", flush=True)
    rates: dict[int, list[float]] = {0: [], waiting: []}
    cpu: dict[int, list[float]] = {0: [], waiting: []}
    for repetition in range(1, args.repetitions + 1):
        for with_waiting in (0, waiting) if repetition % 2 else (waiting, 0):
            url = fresh_database(args.server, database)
            try:
                prepare(url, with_waiting)
                probe = Probe.before()
                rate, cpu_ms = drain_rate(url, jobs)
            finally:
                drop_database(args.server, database)
            rates[with_waiting].append(rate)
            cpu[with_waiting].append(cpu_ms)
            conditions = probe.after().to_json() if probe else {}
            print(
                f"[{repetition}/{args.repetitions}] P1 with {with_waiting} runs waiting: "
                f"{rate:,.0f} jobs/s, worker {cpu_ms:.3f} CPU ms/job (machine {conditions})",
                flush=True,
            )
    without, with_ = statistics.median(rates[0]), statistics.median(rates[waiting])
    cpu_without, cpu_with = statistics.median(cpu[0]), statistics.median(cpu[waiting])
    print(
        f"P1 median without waits {without:,.0f} jobs/s, with {waiting:,} runs waiting "
        f"{with_:,.0f} jobs/s: ratio {with_ / without:.2f}; worker CPU per job "
        f"{cpu_without:.3f} ms without, {cpu_with:.3f} ms with",
        flush=True,
    )

    url = fresh_database(args.server, database)
    try:
        prepare(url, waiting)
        probe = Probe.before()
        measured = latencies(url, samples)
    finally:
        drop_database(args.server, database)
    conditions = probe.after().to_json() if probe else {}
    print(f"latency with {waiting:,} runs waiting, {samples} samples (machine {conditions}):")
    for name, (p50, p99) in measured.items():
        print(f"  {name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    print(f"machine after: {uptime()}", flush=True)


def serve(url: str) -> None:
    """The benchmark's worker (bench.systems.pgflow_system's settings) with the wait flow too."""
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )

    def announce(event: str, fields: dict[str, Any]) -> None:
        if event == "worker.started":
            print("ready", flush=True)

    telemetry.subscribe(announce)
    options = WorkerOptions(concurrency=CONCURRENCY, batch_size=BATCH_SIZE, scheduler=True)
    Worker(SERVED, engine_for(url), options=options).run()


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        serve(sys.argv[2])
    else:
        main(sys.argv[1:])
