"""``python -m bench``: run the workloads on every system, print the table, write JSON."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import structlog
from psycopg import sql
from sqlalchemy.engine import make_url

from bench._api import Adapter, NotSupported
from bench._machine import Probe
from bench._report import Results, render

SYSTEMS = {
    "pgflow-python": "bench.systems.pgflow_system:PgflowAdapter",
    "pgflow-python-otel": "bench.systems.pgflow_system:PgflowOtelAdapter",
    "pgflow-python-pgbouncer": "bench.systems.pgflow_pooled:PgflowPgBouncerAdapter",
    "pgflow-python-pgbouncer-polling": "bench.systems.pgflow_pooled:PgflowPgBouncerPollingAdapter",
    "sql-floor": "bench.systems.sql_floor:SqlFloor",
    "sql-floor-set": "bench.systems.sql_floor:SetBasedSqlFloor",
    "pgqueuer": "bench.systems.pgqueuer_system:PgQueuerAdapter",
    "procrastinate": "bench.systems.procrastinate_system:ProcrastinateAdapter",
    "dbos": "bench.systems.dbos_system:DbosAdapter",
}
# Variants measured on request: `--systems pgflow-python,pgflow-python-otel --workloads P1`;
# through PgBouncer: `--systems pgflow-python,pgflow-python-pgbouncer --workloads P1,P4`.
OPT_IN_SYSTEMS = (
    "pgflow-python-otel",
    "pgflow-python-pgbouncer",
    "pgflow-python-pgbouncer-polling",
)
WORKLOADS = ("P1", "P2", "P3", "P4", "P6")  # P5 is measured in P1, P7 in P6
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--systems",
        default=",".join(name for name in SYSTEMS if name not in OPT_IN_SYSTEMS),
        help=f"comma-separated, of {', '.join(SYSTEMS)} (default: all but {OPT_IN_SYSTEMS})",
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help="P1,P2,P3,P4,P6; P10 (waiting runs, pgflow-python only) on request",
    )
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=10_000, help="P1/P5/P6 jobs drained")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="P6 jobs queued behind")
    parser.add_argument("--runs", type=int, default=500, help="P2 runs of the 3-step flow")
    parser.add_argument("--elements", type=int, default=10_000, help="P3 map elements")
    parser.add_argument("--samples", type=int, default=200, help="P4 start-and-wait samples")
    parser.add_argument(
        "--scale", type=float, default=1.0, help="multiply every size (0.1 for a quick run)"
    )
    parser.add_argument(
        "--report", type=Path, help="print the table of an earlier run's JSON and exit"
    )
    parser.add_argument(
        "--server",
        default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a database URL on the server to use (default: DATABASE_URL, else 127.0.0.1)",
    )
    return parser.parse_args(argv)


def load(name: str) -> Adapter:
    module, _, cls = SYSTEMS[name].partition(":")
    adapter: Adapter = getattr(importlib.import_module(module), cls)()
    return adapter


def fresh_database(server: str, name: str) -> str:
    """Drop and create ``name`` on the server; its URL."""
    with psycopg.connect(server, autocommit=True) as connection:
        identifier = sql.Identifier(name)
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(identifier))
        connection.execute(sql.SQL("CREATE DATABASE {}").format(identifier))
    return make_url(server).set(database=name).render_as_string(hide_password=False)


def drop_database(server: str, name: str) -> None:
    with psycopg.connect(server, autocommit=True) as connection:
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def measure(adapter: Adapter, workload: str, url: str, sizes: dict[str, int]) -> dict[str, float]:
    # The SQL floor has no worker process: no CPU (P5) or RSS (P7) figures of its own.
    if workload == "P1":
        drained = adapter.drain(url, sizes["jobs"], 0)
        cpu = {"P5": drained.cpu_ms_per_job} if drained.worker_cpu_seconds else {}
        return {"P1": drained.rate, **cpu}
    if workload == "P6":
        drained = adapter.drain(url, sizes["jobs"], sizes["backlog"])
        rss = {"P7_before": drained.rss_before_kb / 1024, "P7_after": drained.rss_after_kb / 1024}
        return {"P6_rate": drained.rate, **(rss if drained.rss_before_kb else {})}
    if workload == "P2":
        return {"P2": adapter.sequential_flows(url, sizes["runs"]).rate}
    if workload == "P3":
        timed = adapter.map_fan_in(url, sizes["elements"])
        return {"P3_seconds": timed.seconds, "P3_rate": timed.rate}
    timings = sorted(adapter.latency(url, sizes["samples"]))
    return {
        "P4_p50": statistics.median(timings),
        "P4_p99": timings[min(len(timings) - 1, round(0.99 * (len(timings) - 1)))],
    }


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.report:
        print(render(Results.from_json(json.loads(args.report.read_text()))))
        return 0
    # The harness starts runs with pgflow's client: keep its info events off the report.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    sizes = {
        name: max(1, round(getattr(args, name) * args.scale))
        for name in ("jobs", "backlog", "runs", "elements", "samples")
    }
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    workloads = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    if "P10" in workloads:  # what waiting runs cost: pgflow-python only, bench/waits.py
        workloads.remove("P10")
        from bench import waits  # noqa: PLC0415 - it imports this module

        waits.main(
            [f"--{name}={getattr(args, name)}" for name in ("jobs", "samples", "repetitions")]
            + [f"--scale={args.scale}", f"--server={args.server}"]
        )
        if not workloads:
            return 0
    results = Results(sizes=sizes, repetitions=args.repetitions)
    RESULTS_DIR.mkdir(exist_ok=True)
    path = RESULTS_DIR / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    machine = {"python": platform.python_version(), "cpus": os.cpu_count()}

    def save() -> None:  # after every measurement, so an interrupted run keeps its figures
        path.write_text(json.dumps({"machine": machine, **results.to_json()}, indent=2) + "\n")

    adapters: dict[str, Adapter] = {}
    for name in systems:
        try:
            adapters[name] = load(name)
        except ImportError as exc:
            results.skip(name, f"not installed ({exc.name}): pip install -e '.[bench]'")
            continue
        results.settings[name] = adapters[name].settings
    for repetition in range(1, args.repetitions + 1):
        for workload in workloads:
            for name, adapter in adapters.items():
                # The process id keeps two benchmark runs on one server out of each other's way.
                database = f"bench_{name.replace('-', '_')}_{os.getpid()}"
                url = fresh_database(args.server, database)
                print(f"[{repetition}/{args.repetitions}] {workload} {name} …", file=sys.stderr)
                started = time.perf_counter()
                try:
                    adapter.install(url)
                    probe = Probe.before()
                    figures = measure(adapter, workload, url, sizes)
                    if probe is not None:
                        results.record_conditions(name, workload, probe.after())
                except NotSupported as exc:
                    results.unsupported(name, workload, str(exc))
                    continue
                finally:
                    drop_database(args.server, database)
                for metric, value in figures.items():
                    results.add(name, metric, value)
                save()
                took = time.perf_counter() - started
                where = results.conditions[-1] if probe is not None else {}
                print(f"    {figures} ({took:.0f} s; machine {where})", file=sys.stderr)
    print(render(results))
    save()
    print(f"\nresults written to bench/results/{path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
