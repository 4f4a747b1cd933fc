"""The pure-SQL floor: the same upstream pgflow functions, driven with no Python worker.

One statement per batch reads messages, starts their tasks and completes them with outputs
computed in SQL (one transaction, one round trip), from a loop in the harness process. What
it costs is what PostgreSQL and the pgflow SQL cost; a worker can only add to it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from functools import partial

import psycopg
from psycopg.types.json import Jsonb

from bench import flows
from bench._api import Adapter, Drain, Timed
from bench._process import analyze_filled_tables
from bench.systems.pgflow_system import PgflowAdapter, start_runs
from pgflow.dsl import definition_of

BATCH_SIZE = 50  # as pgflow-python's bench worker
# The bench flows' handlers, in SQL (bench/flows.py has them in Python), on a claimed task t.
OUTPUT = """CASE t.step_slug
    WHEN 'first' THEN to_jsonb((t.input->'run'->>'n')::int + 1)
    WHEN 'second' THEN to_jsonb((t.input->>'first')::int * 2)
    WHEN 'third' THEN to_jsonb((t.input->>'second')::int - 1)
    WHEN 'numbers' THEN to_jsonb(ARRAY(
        SELECT generate_series(0, (t.input->'run'->>'elements')::int - 1)))
    WHEN 'square' THEN to_jsonb((t.input::text)::bigint * (t.input::text)::bigint)
    WHEN 'total' THEN (SELECT to_jsonb(sum(x::bigint))
                       FROM jsonb_array_elements_text(t.input->'square') AS x)
    WHEN 'perform' THEN CASE t.flow_slug WHEN 'bench_ping' THEN '"pong"'::jsonb ELSE 'null' END
END"""
CLAIM = """pgflow.start_tasks(
    %(slug)s, ARRAY(SELECT r.msg_id FROM pgmq.read(%(slug)s, 30, %(batch)s) AS r), %(worker)s
)"""
# Upstream per task: complete_task once per claimed task.
DRIVE = f"""
SELECT count(done.*)
FROM {CLAIM} AS t,
LATERAL pgflow.complete_task(t.run_id, t.step_slug, t.task_index, {OUTPUT}) AS done
"""
# Ours: the same claim through our cached-plan twin of start_tasks, then the whole batch in
# one complete_task_batch call.
CLAIM_OURS = CLAIM.replace("pgflow.start_tasks", "pgflow_python.start_claimed_tasks")
DRIVE_SET_BASED = f"""
WITH t AS (SELECT * FROM {CLAIM_OURS}),
outputs AS (SELECT t.run_id, t.step_slug, t.task_index, {OUTPUT} AS output FROM t)
SELECT count(b.recorded)
FROM pgflow_python.complete_task_batch(
    %(worker)s,
    ARRAY(SELECT o.run_id FROM outputs o ORDER BY o.run_id, o.step_slug, o.task_index),
    ARRAY(SELECT o.step_slug FROM outputs o ORDER BY o.run_id, o.step_slug, o.task_index),
    ARRAY(SELECT o.task_index FROM outputs o ORDER BY o.run_id, o.step_slug, o.task_index),
    ARRAY(SELECT o.output FROM outputs o ORDER BY o.run_id, o.step_slug, o.task_index)
) AS b
"""
RUN_STATUS = "SELECT status FROM pgflow.runs WHERE run_id = %s"
COMPLETED_RUNS = "SELECT count(*) FROM pgflow.runs WHERE flow_slug = %s AND status = 'completed'"


class _Driver:
    """A connection that drives one flow's queue with DRIVE, registered as a worker."""

    def __init__(self, url: str, slug: str, drive: str = DRIVE) -> None:
        self.drive = drive
        self.connection = psycopg.connect(url, autocommit=True)
        self.params = {"slug": slug, "batch": BATCH_SIZE, "worker": uuid.uuid4()}
        self.connection.execute(
            "INSERT INTO pgflow.workers (worker_id, queue_name, function_name)"
            " VALUES (%(worker)s, %(slug)s, 'sql-floor')",
            self.params,
        )

    def step(self) -> int:
        row = self.connection.execute(self.drive, self.params, prepare=True).fetchone()
        return int(row[0]) if row else 0

    def until(self, done: Callable[[], bool], timeout: float = 3600) -> float:
        deadline = time.monotonic() + timeout
        while not done():
            if self.step() == 0 and time.monotonic() > deadline:
                raise TimeoutError("the SQL floor did not finish")
        return time.perf_counter()

    def count(self, query: str, *params: object) -> int:
        row = self.connection.execute(query, params, prepare=True).fetchone()
        return int(row[0]) if row else 0


class SqlFloor(Adapter):
    name = "sql-floor"
    settings = (
        f"one connection, one statement per batch of {BATCH_SIZE}: read, start, "
        "upstream's complete_task per task"
    )
    drive = DRIVE

    def install(self, url: str) -> None:
        PgflowAdapter().install(url)

    def drain(self, url: str, jobs: int, backlog: int) -> Drain:
        slug = definition_of(flows.Noop).slug
        start_runs(url, slug, jobs + backlog)
        analyze_filled_tables(url)
        driver = _Driver(url, slug, self.drive)
        completed = 0
        started = time.perf_counter()
        while completed < jobs:
            completed += driver.step()
        seconds = time.perf_counter() - started
        driver.connection.close()
        return Drain(jobs, seconds, worker_cpu_seconds=0.0, rss_before_kb=0, rss_after_kb=0)

    def sequential_flows(self, url: str, runs: int) -> Timed:
        slug = definition_of(flows.Chain).slug
        driver = _Driver(url, slug, self.drive)
        started = time.perf_counter()
        start_runs(url, slug, runs)
        # Counting completed runs costs a query: only when a batch came back short.
        done = driver.until(
            lambda: driver.step() < BATCH_SIZE and driver.count(COMPLETED_RUNS, slug) >= runs
        )
        driver.connection.close()
        return Timed(runs, done - started)

    def map_fan_in(self, url: str, elements: int) -> Timed:
        slug = definition_of(flows.FanOut).slug
        driver = _Driver(url, slug, self.drive)
        started = time.perf_counter()
        run_id = self._start(driver, slug, {"elements": elements})
        done = driver.until(partial(self._is_completed, driver, run_id))
        driver.connection.close()
        return Timed(elements, done - started)

    def latency(self, url: str, samples: int) -> list[float]:
        slug = definition_of(flows.Ping).slug
        driver = _Driver(url, slug, self.drive)
        timings = []
        for _ in range(samples):
            started = time.perf_counter()
            run_id = self._start(driver, slug, {})
            driver.until(partial(self._is_completed, driver, run_id))
            timings.append(1000 * (time.perf_counter() - started))
        driver.connection.close()
        return timings

    @staticmethod
    def _start(driver: _Driver, slug: str, flow_input: object) -> uuid.UUID:
        row = driver.connection.execute(
            "SELECT run_id FROM pgflow.start_flow(%s, %s::jsonb)",
            (slug, Jsonb(flow_input)),
        ).fetchone()
        assert row is not None
        return uuid.UUID(str(row[0]))

    @staticmethod
    def _is_completed(driver: _Driver, run_id: uuid.UUID) -> bool:
        row = driver.connection.execute(RUN_STATUS, (run_id,), prepare=True).fetchone()
        return row is not None and row[0] == "completed"


class SetBasedSqlFloor(SqlFloor):
    """The floor of pgflow-python's own SQL: the claim through pgflow_python.start_claimed_tasks,
    then the whole batch completed by one pgflow_python.complete_task_batch call (what the
    worker runs, minus the worker)."""

    name = "sql-floor-set"
    settings = (
        f"one connection, one statement per batch of {BATCH_SIZE}: read, "
        "pgflow_python.start_claimed_tasks, pgflow_python.complete_task_batch"
    )
    drive = DRIVE_SET_BASED
