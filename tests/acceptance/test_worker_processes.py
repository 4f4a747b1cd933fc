"""Workers as separate processes: several at once, SIGTERM, and kill -9 in the middle of a task."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

import sql_only_flow
from pgflow.dsl import definition_of
from tests.helpers import database
from tests.helpers.database import register_flows
from tests.helpers.process_flows import SlowStep, TenSteps
from tests.helpers.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
WorkerFactory = Callable[..., subprocess.Popen[str]]
WORKER_COMMAND = [sys.executable, "-m", "pgflow", "run-worker", "tests.helpers.process_flows"]
WORKER_COMMAND += ["--log-format", "json", "--poll-interval", "0.5"]
LOGS: dict[int, Path] = {}
FAST_RECOVERY = ["--heartbeat-interval", "0.5", "--heartbeat-timeout", "2"]
FAST_RECOVERY += ["--recovery-interval", "0.5"]


@pytest.fixture
def spawn_worker(pgflow_database: URL, tmp_path: Path) -> Iterator[WorkerFactory]:
    processes: list[subprocess.Popen[str]] = []

    def spawn(*args: str) -> subprocess.Popen[str]:
        env = {**os.environ, "DATABASE_URL": database.libpq_url(pgflow_database)}
        # A file, not a pipe: an unread pipe fills up and blocks the worker's logging.
        log_path = tmp_path / f"worker-{len(processes)}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [*WORKER_COMMAND, *args],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        LOGS[process.pid] = log_path
        processes.append(process)
        return process

    yield spawn
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)


def worker_log(process: subprocess.Popen[str]) -> str:
    return LOGS[process.pid].read_text()


def query(engine: Engine, statement: str, **params: Any) -> list[Any]:
    with engine.begin() as connection:
        return list(connection.execute(sa.text(statement), params))


def test_three_worker_processes_complete_100_runs_each_task_once(
    pgflow_engine: Engine, spawn_worker: WorkerFactory
) -> None:
    register_flows(pgflow_engine, TenSteps, SlowStep)
    workers = [spawn_worker("--concurrency", "10") for _ in range(3)]
    with pgflow_engine.begin() as connection:
        run_ids = [sql_only_flow.start_run(connection, "ten_steps", {"n": n}) for n in range(100)]

    def all_done() -> bool:
        [(started,)] = query(
            pgflow_engine, "SELECT count(*) FROM pgflow.runs WHERE status <> 'completed'"
        )
        return bool(started == 0)

    wait_until(all_done, timeout=120, what="100 runs to complete")
    outputs = dict(query(pgflow_engine, "SELECT run_id, output FROM pgflow.runs"))
    assert sorted(outputs) == sorted(run_ids)
    for n, run_id in enumerate(run_ids):
        assert outputs[run_id] == {"s10": {"n": n, "result": 180 * (n + 1) + 6}}
    tasks = query(pgflow_engine, "SELECT status, attempts_count FROM pgflow.step_tasks")
    assert len(tasks) == 100 * (9 + 3)
    assert {tuple(t) for t in tasks} == {("completed", 1)}  # each task claimed and done once
    pids = query(
        pgflow_engine,
        "SELECT DISTINCT output->>'pid' FROM pgflow.step_tasks WHERE step_slug = 'each'",
    )
    assert len(pids) >= 2, "the work was not shared between processes"
    assert all(w.poll() is None for w in workers)


def test_sigterm_finishes_the_task_in_flight(
    pgflow_engine: Engine, spawn_worker: WorkerFactory
) -> None:
    register_flows(pgflow_engine, TenSteps, SlowStep)
    worker = spawn_worker()
    with pgflow_engine.begin() as connection:
        run_id = sql_only_flow.start_run(connection, "slow_step", {"seconds": 1.5})
    wait_until(
        lambda: query(pgflow_engine, "SELECT 1 FROM pgflow.step_tasks WHERE status = 'started'"),
        timeout=20,
        what="the task to start",
    )
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0
    [(status, output)] = query(
        pgflow_engine, "SELECT status, output FROM pgflow.runs WHERE run_id = :id", id=run_id
    )
    assert status == "completed"
    assert output == {"sleepy": worker.pid}
    assert '"event": "worker.stopped"' in worker_log(worker)


def test_kill_9_mid_task_the_run_still_completes_once(
    pgflow_engine: Engine, spawn_worker: WorkerFactory
) -> None:
    register_flows(pgflow_engine, TenSteps, SlowStep)
    doomed = spawn_worker(*FAST_RECOVERY)
    with pgflow_engine.begin() as connection:
        run_id = sql_only_flow.start_run(connection, "slow_step", {"seconds": 2.0})
    wait_until(
        lambda: query(pgflow_engine, "SELECT 1 FROM pgflow.step_tasks WHERE status = 'started'"),
        timeout=20,
        what="the task to start",
    )
    doomed.kill()  # SIGKILL: no shutdown, no report, heartbeats stop
    doomed.wait(timeout=10)
    survivor = spawn_worker(*FAST_RECOVERY)
    wait_until(
        lambda: query(
            pgflow_engine,
            "SELECT 1 FROM pgflow.runs WHERE run_id = :id AND status <> 'started'",
            id=run_id,
        ),
        timeout=60,
        what="the run to finish after recovery",
    )
    [(status, output)] = query(
        pgflow_engine, "SELECT status, output FROM pgflow.runs WHERE run_id = :id", id=run_id
    )
    assert status == "completed"
    assert output == {"sleepy": survivor.pid}
    [(task_status, completed_at)] = query(
        pgflow_engine,
        "SELECT status, completed_at FROM pgflow.step_tasks WHERE run_id = :id",
        id=run_id,
    )
    assert task_status == "completed"
    assert completed_at is not None
    assert definition_of(SlowStep).slug == "slow_step"


def test_a_flow_missing_from_the_database_stops_the_worker_with_the_fix(
    spawn_worker: WorkerFactory,
) -> None:
    worker = spawn_worker()
    assert worker.wait(timeout=30) == 1
    log = worker_log(worker)
    assert "error: flow 'ten_steps' is not in the database" in log
    assert "Traceback" not in log
