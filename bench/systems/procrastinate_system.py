"""Procrastinate 3.10 under the benchmark workloads.

Worker process: ``python -m bench.systems.procrastinate_system worker <url> [--concurrency N]``.
The tasks are declared once on a module-level app; each side swaps in its own connector
(``App.replace_connector``): an async pool in the worker, a sync one in the harness.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

import procrastinate
import psycopg
import psycopg_pool
from procrastinate.jobs import Status
from procrastinate.types import JSONDict

from bench._api import Adapter, Drain, Timed
from bench._process import READY, WorkerProcess, analyze_filled_tables, measured_drain, wait_until

MODULE = "bench.systems.procrastinate_system"
# Async no-op jobs are bound by the two round trips per job (fetch, finish), so several
# sub-workers overlap them; the pool holds one connection per sub-worker plus one
# (docs/discussions.md, "Mind the size of your PostgreSQL pool").
CONCURRENCY = 10
# LISTEN/NOTIFY wakes the worker; polling is the fallback. 3.10 clears its wake-up event after
# every fetch, so a NOTIFY landing during a fetch that found nothing is lost until the next
# poll (seen as 0.5 s outliers in P4 with a 0.5 s poll): a short poll bounds that, cheaply.
POLLING_INTERVAL = 0.1
SUCCEEDED = "SELECT count(*) FROM procrastinate_jobs WHERE task_name = %s AND status = 'succeeded'"
# The listener's last statement stays visible in pg_stat_activity once it has run.
LISTENING = (
    "SELECT count(*) AS n FROM pg_stat_activity"
    " WHERE datname = current_database() AND query LIKE 'LISTEN %%procrastinate%%'"
)
MAP_TABLES = (
    "CREATE TABLE bench_map_output (idx int PRIMARY KEY, value bigint NOT NULL);"
    " CREATE TABLE bench_map_run (id int PRIMARY KEY, done int NOT NULL, total int NOT NULL,"
    " result bigint)"
)
# One statement: store the output, count it, and learn whether this was the last element.
SAVE_ELEMENT = (
    "WITH saved AS (INSERT INTO bench_map_output VALUES (%s, %s))"
    " UPDATE bench_map_run SET done = done + 1 WHERE id = 1 RETURNING done = total"
)
FAN_IN = "UPDATE bench_map_run SET result = (SELECT sum(value) FROM bench_map_output)"
TIMEOUT = 3600.0

app = procrastinate.App(connector=procrastinate.PsycopgConnector())


def _pool() -> psycopg_pool.AsyncConnectionPool:
    """The worker's own pool, shared by the tasks that write the map tables."""
    connector = app.connector
    if not isinstance(connector, procrastinate.PsycopgConnector):
        raise TypeError("the tasks run in the worker, on a PsycopgConnector")
    return connector.pool


def _args(**kwargs: int) -> JSONDict:
    return dict(kwargs)


@app.task(name="noop")
async def noop() -> None:
    pass


@app.task(name="step1")
async def step1(value: int) -> int:
    await step2.defer_async(value=value + 1)
    return value + 1


@app.task(name="step2")
async def step2(value: int) -> int:
    await step3.defer_async(value=value * 2)
    return value * 2


@app.task(name="step3")
async def step3(value: int) -> int:
    return value - 1


@app.task(name="square")
async def square(idx: int) -> None:
    async with _pool().connection() as connection, connection.transaction():
        cursor = await connection.execute(SAVE_ELEMENT, (idx, idx * idx))
        row = await cursor.fetchone()
        if row is not None and row[0]:
            # The last element defers the fan-in in its own transaction: exactly once.
            await fan_in.configure(connection=connection).defer_async()


@app.task(name="fan_in")
async def fan_in() -> None:
    async with _pool().connection() as connection:
        await connection.execute(FAN_IN)


class ProcrastinateAdapter(Adapter):
    name = "procrastinate"
    settings = (
        f"procrastinate 3.10.0, one worker process, async tasks, concurrency {CONCURRENCY}, "
        f"psycopg pool {CONCURRENCY + 1}, listen_notify on, fetch polling {POLLING_INTERVAL} s, "
        "jobs kept (delete_jobs=never), batch_defer to enqueue, log level warning"
    )

    def install(self, url: str) -> None:
        with app.replace_connector(procrastinate.SyncPsycopgConnector(conninfo=url)), app.open():
            app.schema_manager.apply_schema()

    def _worker(self, url: str) -> WorkerProcess:
        return WorkerProcess(MODULE, "worker", url, "--concurrency", str(CONCURRENCY))

    def drain(self, url: str, jobs: int, backlog: int) -> Drain:
        with app.replace_connector(procrastinate.SyncPsycopgConnector(conninfo=url)), app.open():
            noop.batch_defer(*({} for _ in range(jobs + backlog)))
        analyze_filled_tables(url)
        with self._worker(url) as worker:
            return measured_drain(worker, url, SUCCEEDED, ["noop"], jobs)

    def sequential_flows(self, url: str, runs: int) -> Timed:
        connector = procrastinate.SyncPsycopgConnector(conninfo=url)
        with self._worker(url), app.replace_connector(connector), app.open():
            started = time.perf_counter()
            # All runs started in one call, as an application bulk-starting them would.
            step1.batch_defer(*(_args(value=n) for n in range(runs)))
            done = wait_until(url, SUCCEEDED, ["step3"], lambda n: n >= runs, timeout=TIMEOUT)
        return Timed(runs, done - started)

    def map_fan_in(self, url: str, elements: int) -> Timed:
        with psycopg.connect(url) as connection:
            connection.execute(MAP_TABLES)
            connection.execute("INSERT INTO bench_map_run VALUES (1, 0, %s, NULL)", (elements,))
        connector = procrastinate.SyncPsycopgConnector(conninfo=url)
        with self._worker(url), app.replace_connector(connector), app.open():
            started = time.perf_counter()
            square.batch_defer(*(_args(idx=n) for n in range(elements)))
            done = wait_until(url, SUCCEEDED, ["fan_in"], lambda n: n >= 1, timeout=TIMEOUT)
        with psycopg.connect(url) as connection:
            row = connection.execute("SELECT result FROM bench_map_run").fetchone()
        if row is None or row[0] != sum(n * n for n in range(elements)):
            raise RuntimeError(f"fan-in computed {row}")
        return Timed(elements, done - started)

    def latency(self, url: str, samples: int) -> list[float]:
        timings: list[float] = []
        connector = procrastinate.SyncPsycopgConnector(conninfo=url, min_size=1, max_size=1)
        with self._worker(url), app.replace_connector(connector), app.open():
            for _ in range(samples):
                started = time.perf_counter()
                job_id = noop.defer()
                # Procrastinate notifies insertions only, so an application polls the status.
                deadline = time.monotonic() + 60
                while app.job_manager.get_job_status(job_id) is not Status.SUCCEEDED:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"job {job_id} not done after 60 s")
                    time.sleep(0.001)
                timings.append(1000 * (time.perf_counter() - started))
        return timings


async def _work(url: str, concurrency: int) -> None:
    pool_size = concurrency + 1
    connector = procrastinate.PsycopgConnector(conninfo=url, min_size=pool_size, max_size=pool_size)
    with app.replace_connector(connector):
        async with app.open_async():
            worker = asyncio.create_task(
                app.run_worker_async(
                    concurrency=concurrency,
                    listen_notify=True,
                    fetch_job_polling_interval=POLLING_INTERVAL,
                    delete_jobs="never",
                )
            )
            # "ready" only once LISTEN is in place: a job deferred right after must wake us.
            deadline = time.monotonic() + 30
            while not (await connector.execute_query_one_async(LISTENING))["n"]:
                if worker.done() or time.monotonic() > deadline:
                    await worker
                    raise RuntimeError("the worker never started listening")
                await asyncio.sleep(0.005)
            print(READY, flush=True)  # the harness waits for this line
            await worker


def serve(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE} worker")
    parser.add_argument("url")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    asyncio.run(_work(args.url, args.concurrency))


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit(f"usage: python -m {MODULE} worker <url> [--concurrency N]")
    # Run the imported module's app, not this __main__ copy: one app, one task registry.
    from bench.systems import procrastinate_system  # noqa: PLW0406 - see above

    procrastinate_system.serve(sys.argv[2:])
