"""``python -m bench.capacity``: the capacity curve, tasks/s against database CPU for 1, 2 and 4
worker processes draining one backlog of no-op single-step jobs (docs/performance.md, "Capacity").

Database CPU is the user + system CPU of the server backends connected to the benchmark's own
database (read from /proc, so the server must be local and readable: run as root or as the
server's user), sampled for every backend seen while the workers drain. Other databases' load on
a shared server is left out; the server's own background processes (WAL writer, checkpointer)
are too, so the figure is a little low. ``--through-pgbouncer`` runs the workers through a
PgBouncer in transaction mode (with a direct ``--listen-url``), the database CPU then including
what the pooler saves or costs the server.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from bench import flows
from bench.__main__ import drop_database, fresh_database
from bench._process import WorkerProcess, analyze_filled_tables
from bench.systems.pgflow_system import COMPLETED_RUNS, MODULE, PgflowAdapter, start_runs
from pgflow.dsl import definition_of
from tests.helpers.pgbouncer import pgbouncer

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HOLD = "UPDATE {} SET vt = now() + interval '1 day'"
RELEASE = "UPDATE {} SET vt = now()"
SAMPLE_EVERY = 0.2


def backend_cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:  # the backend has exited (or /proc is not ours to read)
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@dataclass
class BackendCpu:
    """CPU the database's backends spent since each was first seen."""

    first: dict[int, float]
    last: dict[int, float]

    @classmethod
    def empty(cls) -> BackendCpu:
        return cls({}, {})

    def sample(self, connection: psycopg.Connection[tuple[int]], database: str) -> None:
        rows = connection.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
        for (pid,) in rows:
            seconds = backend_cpu_seconds(pid)
            if seconds is not None:
                self.first.setdefault(pid, seconds)
                self.last[pid] = seconds

    @property
    def seconds(self) -> float:
        return sum(self.last[pid] - self.first[pid] for pid in self.last)


@dataclass(frozen=True)
class Point:
    workers: int
    tasks: int
    seconds: float
    database_cpu_seconds: float
    worker_cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds

    def row(self) -> str:
        return (
            f"| {self.workers} | {self.rate:,.0f} | {self.database_cpu_seconds / self.seconds:.2f} "
            f"| {1000 * self.database_cpu_seconds / self.tasks:.3f} "
            f"| {self.worker_cpu_seconds / self.seconds:.2f} |"
        )


@contextmanager
def worker_url(url: str, through_pgbouncer: bool) -> Iterator[tuple[str, tuple[str, ...]]]:
    """The URL the workers use and their extra arguments."""
    if not through_pgbouncer:
        yield url, ()
        return
    with pgbouncer(make_url(url), pool_size=20) as bouncer:
        yield bouncer.libpq_url(str(make_url(url).database)), ("--listen-url", url)


def measure(server: str, workers: int, jobs: int, *, through_pgbouncer: bool) -> Point:
    database = f"bench_capacity_{os.getpid()}"
    url = fresh_database(server, database)
    slug = definition_of(flows.Noop).slug
    try:
        PgflowAdapter().install(url)
        start_runs(url, slug, jobs)
        analyze_filled_tables(url)
        # The backlog is held invisible until every worker is ready, then released at once:
        # otherwise the first worker drains part of it while the others start.
        queue = sql.Identifier("pgmq", f"q_{slug}")
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(sql.SQL(HOLD).format(queue))
        cpu = BackendCpu.empty()
        with (
            worker_url(url, through_pgbouncer) as (served, extra),
            ExitStack() as stack,
            psycopg.connect(url, autocommit=True) as watcher,
        ):
            processes = [
                stack.enter_context(WorkerProcess(MODULE, "worker", served, *extra))
                for _ in range(workers)
            ]
            worker_cpu = sum(p.cpu_seconds() for p in processes)
            cpu.sample(watcher, database)
            with watcher.transaction():
                watcher.execute(sql.SQL(RELEASE).format(queue))
                watcher.execute("SELECT pg_notify('pgflow_wakeup', %s)", (slug,))
            started = time.perf_counter()
            while (done := _completed(watcher, slug)) < jobs:
                cpu.sample(watcher, database)
                time.sleep(SAMPLE_EVERY)
            seconds = time.perf_counter() - started
            cpu.sample(watcher, database)
            worker_cpu = sum(p.cpu_seconds() for p in processes) - worker_cpu
        return Point(workers, done, seconds, cpu.seconds, worker_cpu)
    finally:
        drop_database(server, database)


def _completed(connection: psycopg.Connection[tuple[int]], slug: str) -> int:
    row = connection.execute(COMPLETED_RUNS, (slug,)).fetchone()
    return int(row[0]) if row else 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__)
    parser.add_argument("--workers", default="1,2,4", help="worker process counts")
    parser.add_argument("--jobs", type=int, default=20_000, help="backlog drained per point")
    parser.add_argument("--through-pgbouncer", action="store_true")
    parser.add_argument(
        "--server",
        default=os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )
    args = parser.parse_args(argv)
    load = os.getloadavg()
    print(
        f"load average before: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} CPUs"
        f"{' (through PgBouncer)' if args.through_pgbouncer else ''}",
        file=sys.stderr,
    )
    print("| worker processes | tasks/s | DB CPU (cores) | DB CPU ms/task | worker CPU (cores) |")
    print("|---|---|---|---|---|")
    for count in (int(n) for n in args.workers.split(",")):
        point = measure(args.server, count, args.jobs, through_pgbouncer=args.through_pgbouncer)
        print(point.row(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
