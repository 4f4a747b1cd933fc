"""DBOS Transact (Python): workflows of steps, dispatched through one database-backed queue.

The harness process talks to DBOS only as an outside application would, through ``DBOSClient``
(enqueue by workflow name, wait on handles); the worker process registers the workflows and
launches DBOS, whose queue thread polls the queue and runs each workflow on its thread pool.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import sqlalchemy as sa
from dbos import DBOS, DBOSClient, DBOSConfig, EnqueueOptions, WorkflowHandle

from bench._api import Adapter, Drain, Timed
from bench._process import READY, WorkerProcess, analyze_filled_tables, measured_drain, wait_until

MODULE = "bench.systems.dbos_system"
APP = "bench"
QUEUE = "bench"
# Per-process concurrency is what DBOS's queue tutorial recommends over global limits; without it
# one poll claims the whole backlog and starts one executor thread per workflow.
WORKER_CONCURRENCY = 32
# The default pool (20, no overflow) would make a full worker wait for connections.
POOL_SIZE = WORKER_CONCURRENCY + 8
# DBOS queues poll (no LISTEN/NOTIFY wake-up); the default is 1 s. "Smaller values reduce dequeue
# latency at the cost of more database load" (register_queue docstring).
QUEUE_POLL_SEC = 0.01
# DBOSClient handles poll the status row for results; the default is 1 s.
RESULT_POLL_SEC = 0.01
TIMEOUT = 600.0

_SUCCESS_BY_NAME = (
    "SELECT count(*) FROM dbos.workflow_status WHERE status = 'SUCCESS' AND name = %s"
)


@DBOS.step()
def noop_step() -> None:
    return None


@DBOS.workflow(name="noop")
def noop() -> None:
    noop_step()


@DBOS.step()
def add_one(value: int) -> int:
    return value + 1


@DBOS.workflow(name="chain")
def chain(value: int) -> int:
    # Three steps in sequence, each fed the previous one's output.
    return add_one(add_one(add_one(value)))


@DBOS.step()
def double(value: int) -> int:
    return 2 * value


@DBOS.workflow(name="map_item")
def map_item(value: int) -> int:
    return double(value)


@DBOS.step()
def total(values: list[int]) -> int:
    return sum(values)


@DBOS.workflow(name="map_fan_in")
def map_fan_in(elements: int) -> int:
    # DBOS's fan-out/fan-in idiom (queue tutorial): enqueue one child workflow per element on a
    # queue, then wait on every handle in order and reduce the results in a step.
    handles = [DBOS.enqueue_workflow(QUEUE, map_item, i) for i in range(elements)]
    return total([h.get_result(polling_interval_sec=RESULT_POLL_SEC) for h in handles])


def _client(url: str) -> DBOSClient:
    return DBOSClient(system_database_url=url, application_name=APP)


def _options(workflow: str) -> EnqueueOptions:
    return {"workflow_name": workflow, "queue_name": QUEUE}


class DbosAdapter(Adapter):
    name = "dbos"
    settings = (
        f"DBOS 3.4.0: one queue, worker_concurrency={WORKER_CONCURRENCY}, "
        f"polling_interval_sec={QUEUE_POLL_SEC}; sys_db_pool_size={POOL_SIZE}; "
        f"client get_result polling {RESULT_POLL_SEC} s; map = child workflows on the queue"
    )

    def install(self, url: str) -> None:
        DBOS.migrate(url)
        client = _client(url)
        try:
            # Registered here, before any worker launches, so a worker's queue thread finds it
            # on its first pass instead of up to a second after a post-launch registration.
            client.register_queue(
                QUEUE,
                worker_concurrency=WORKER_CONCURRENCY,
                polling_interval_sec=QUEUE_POLL_SEC,
            )
        finally:
            client.destroy()

    def drain(self, url: str, jobs: int, backlog: int) -> Drain:
        client = _client(url)
        engine = sa.create_engine(sa.make_url(url).set(drivername="postgresql+psycopg"))
        try:
            # enqueue_in_transaction is the supported bulk path: one commit for all rows.
            with engine.begin() as connection:
                for _ in range(jobs + backlog):
                    client.enqueue_in_transaction(connection, _options("noop"))
        finally:
            engine.dispose()
            client.destroy()
        analyze_filled_tables(url)
        with WorkerProcess(MODULE, "worker", url) as worker:
            return measured_drain(worker, url, _SUCCESS_BY_NAME, ["noop"], jobs)

    def sequential_flows(self, url: str, runs: int) -> Timed:
        client = _client(url)
        try:
            with WorkerProcess(MODULE, "worker", url):
                start = time.perf_counter()
                for i in range(runs):
                    client.enqueue(_options("chain"), i)
                done = wait_until(
                    url, _SUCCESS_BY_NAME, ["chain"], lambda n: n >= runs, timeout=TIMEOUT
                )
                return Timed(runs, done - start)
        finally:
            client.destroy()

    def map_fan_in(self, url: str, elements: int) -> Timed:
        client = _client(url)
        try:
            with WorkerProcess(MODULE, "worker", url):
                start = time.perf_counter()
                handle: WorkflowHandle[int] = client.enqueue(_options("map_fan_in"), elements)
                done = wait_until(
                    url,
                    "SELECT count(*) FROM dbos.workflow_status"
                    " WHERE status = 'SUCCESS' AND workflow_uuid = %s",
                    [handle.get_workflow_id()],
                    lambda n: n == 1,
                    timeout=TIMEOUT,
                )
                return Timed(elements, done - start)
        finally:
            client.destroy()

    def latency(self, url: str, samples: int) -> list[float]:
        client = _client(url)
        timings: list[float] = []
        try:
            with WorkerProcess(MODULE, "worker", url):
                for _ in range(samples):
                    start = time.perf_counter()
                    handle: WorkflowHandle[None] = client.enqueue(_options("noop"))
                    handle.get_result(polling_interval_sec=RESULT_POLL_SEC)
                    timings.append(1000 * (time.perf_counter() - start))
        finally:
            client.destroy()
        return timings


def worker(url: str) -> None:
    """Launch DBOS on the queue registered by ``install`` and serve until SIGTERM."""
    # SIGTERM ends the process at once: DBOS.destroy() would tear the system database down
    # under in-flight workflows (a backlog is still running) and log their failures. DBOS is
    # built to survive exactly this kind of stop, and the database is thrown away anyway.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    config: DBOSConfig = {
        "name": APP,
        "system_database_url": url,
        "log_level": "WARNING",  # DBOS logs to stderr; stdout carries only "ready"
        "run_migrations": False,  # install() migrated already
        "sys_db_pool_size": POOL_SIZE,
    }
    DBOS(config=config)
    DBOS.launch()
    print(READY, flush=True)
    while True:
        signal.pause()


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "worker":
        sys.exit(f"usage: python -m {MODULE} worker URL")
    worker(sys.argv[2])
