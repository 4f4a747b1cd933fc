"""PgQueuer 1.6.0 under the benchmark workloads.

Jobs are PgQueuer entrypoints; a chain is a job enqueueing the next one, and a map's fan-in is
enqueued by the map job that brings a counter in a small table of ours to zero. PgQueuer deletes a
finished job from ``pgqueuer`` and records its final status in ``pgqueuer_log``, so completion is
counted there.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TypeVar

import psycopg
import uvloop
from pgqueuer import AsyncpgDriver, Job, PgQueuer, PsycopgDriver, Queries
from pgqueuer.core.completion import CompletionWatcher
from pgqueuer.ports.driver import Driver

from bench._api import Adapter, Drain, Timed
from bench._process import WorkerProcess, analyze_filled_tables, measured_drain, wait_until

MODULE = "bench.systems.pgqueuer_system"
BATCH_SIZE = 100
TIMEOUT = 600.0
DONE = "SELECT count(*) FROM pgqueuer_log WHERE entrypoint = %s AND status = 'successful'"
MAP_TABLES = """
CREATE TABLE IF NOT EXISTS bench_map_output (x integer PRIMARY KEY, y bigint NOT NULL);
CREATE TABLE IF NOT EXISTS bench_map_run (remaining integer NOT NULL, total bigint);
"""
# Idempotent under redelivery: only the first insert of an output decrements the counter, so
# exactly one map job sees zero and enqueues the fan-in.
MAP_RECORD = """
WITH stored AS (
    INSERT INTO bench_map_output (x, y) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1
)
UPDATE bench_map_run SET remaining = remaining - 1
WHERE EXISTS (SELECT 1 FROM stored) RETURNING remaining
"""
FAN_IN = "UPDATE bench_map_run SET total = (SELECT sum(y) FROM bench_map_output)"

T = TypeVar("T")


# asyncpg is PgQueuer's recommended driver (its `asyncpg` extra); psycopg is the fallback.
DRIVER = "asyncpg" if importlib.util.find_spec("asyncpg") else "psycopg"


async def _connect(url: str) -> tuple[Driver, Callable[[], Awaitable[None]]]:
    """A PgQueuer driver on a new connection, and how to close that connection."""
    if DRIVER == "asyncpg":
        # Imported here: PgQueuer works without it (asyncpg is in the bench extra).
        import asyncpg  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: PLC0415

        connection = await asyncpg.connect(url)
        return AsyncpgDriver(connection), connection.close
    # psycopg holds a connection's lock while it waits for notifications (up to 1 s in
    # PgQueuer's watcher), so queries on a listening psycopg connection stall.
    aconnection = await psycopg.AsyncConnection.connect(url, autocommit=True)
    return PsycopgDriver(aconnection), aconnection.close


async def _with_queries(url: str, use: Callable[[Queries], Awaitable[T]]) -> T:
    driver, close = await _connect(url)
    try:
        return await use(Queries(driver))
    finally:
        await close()


def _run(url: str, use: Callable[[Queries], Awaitable[T]]) -> T:
    return uvloop.run(_with_queries(url, use))


def _enqueue(url: str, entrypoint: str, payloads: list[bytes]) -> None:
    """One batch insert (PgQueuer's list form of ``enqueue``), committed."""

    async def use(queries: Queries) -> None:
        if payloads:
            await queries.enqueue([entrypoint] * len(payloads), list(payloads), [0] * len(payloads))

    _run(url, use)


class PgQueuerAdapter(Adapter):
    name = "pgqueuer"
    settings = (
        f"PgQueuer 1.6.0, {DRIVER} driver, uvloop, durable tables + `pgq autovac` tuning, "
        f"batch_size={BATCH_SIZE}, no max_concurrent_tasks cap, LISTEN/NOTIFY wakeups, "
        f"completion via CompletionWatcher (debounce 0)"
    )

    def install(self, url: str) -> None:
        async def use(queries: Queries) -> None:
            await queries.install()
            await queries.optimize_autovacuum()  # what `pgq autovac` applies

        _run(url, use)

    def drain(self, url: str, jobs: int, backlog: int) -> Drain:
        _enqueue(url, "noop", [b""] * (jobs + backlog))
        analyze_filled_tables(url)
        with WorkerProcess(MODULE, "worker", url) as worker:
            return measured_drain(worker, url, DONE, ["noop"], jobs)

    def sequential_flows(self, url: str, runs: int) -> Timed:
        with WorkerProcess(MODULE, "worker", url):
            start = time.perf_counter()
            _enqueue(url, "step1", [str(i).encode() for i in range(runs)])
            end = wait_until(url, DONE, ["step3"], lambda n: n >= runs, timeout=TIMEOUT)
        return Timed(runs, end - start)

    def map_fan_in(self, url: str, elements: int) -> Timed:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(MAP_TABLES)
            connection.execute("INSERT INTO bench_map_run (remaining) VALUES (%s)", [elements])
        with WorkerProcess(MODULE, "worker", url):
            start = time.perf_counter()
            _enqueue(url, "map", [str(x).encode() for x in range(elements)])
            end = wait_until(url, DONE, ["fan_in"], lambda n: n >= 1, timeout=TIMEOUT)
        return Timed(elements, end - start)

    def latency(self, url: str, samples: int) -> list[float]:
        async def measure(queries: Queries) -> list[float]:
            # The watcher LISTENs on a connection of its own: psycopg holds a connection's lock
            # while it waits for notifications, which would stall the enqueues.
            millis: list[float] = []
            # The watcher LISTENs on a connection of its own, as an application's would.
            watcher_driver, close = await _connect(url)
            watcher = CompletionWatcher(
                watcher_driver, queries=Queries(watcher_driver), debounce=timedelta(0)
            )
            try:
                async with watcher_driver, watcher:
                    for _ in range(samples):
                        start = time.perf_counter()
                        [job_id] = await queries.enqueue("noop", None)
                        status = await asyncio.wait_for(watcher.wait_for(job_id), TIMEOUT)
                        millis.append(1000 * (time.perf_counter() - start))
                        if status != "successful":
                            raise RuntimeError(f"job {job_id} ended {status}")
            finally:
                await close()
            return millis

        with WorkerProcess(MODULE, "worker", url):
            return _run(url, measure)


async def _work(url: str, batch_size: int) -> None:
    driver, close = await _connect(url)
    pgq = PgQueuer(driver)
    queries = pgq.qm.queries

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        pass

    # A chain in PgQueuer: each step enqueues the next with its output as payload.
    @pgq.entrypoint("step1")
    async def step1(job: Job) -> None:
        await queries.enqueue("step2", str(int(job.payload or b"0") + 1).encode())

    @pgq.entrypoint("step2")
    async def step2(job: Job) -> None:
        await queries.enqueue("step3", str(int(job.payload or b"0") * 2).encode())

    @pgq.entrypoint("step3")
    async def step3(job: Job) -> None:
        pass

    # The counter row serialises the map jobs' commits anyway, so their SQL shares PgQueuer's
    # connection (a pool measured no faster).
    @pgq.entrypoint("map")
    async def map_square(job: Job) -> None:
        x = int(job.payload or b"0")
        rows = await driver.fetch(MAP_RECORD, x, x * x)
        if rows and rows[0]["remaining"] == 0:
            await queries.enqueue("fan_in", None)

    @pgq.entrypoint("fan_in")
    async def fan_in(job: Job) -> None:
        await driver.execute(FAN_IN)

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, pgq.shutdown.set)
    print("ready", flush=True)
    try:
        await pgq.run(batch_size=batch_size)
    finally:
        await close()


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] != "worker":
        sys.exit(f"usage: python -m {MODULE} worker <url> [batch_size]")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    uvloop.run(_work(argv[1], int(argv[2]) if len(argv) > 2 else BATCH_SIZE))


if __name__ == "__main__":
    main(sys.argv[1:])
