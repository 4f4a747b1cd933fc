"""Chaos: 200 runs of a DAG with a map step, three worker processes, two kill -9s of a process
holding started tasks and two PostgreSQL restarts while tasks run, at random points. Every run
completes, every task is completed exactly once, and no worker process is left alive without
serving.

The server is a cluster this test starts on a port of its own (tests/helpers/own_cluster.py);
the shared server is never stopped. Set PGFLOW_CHAOS_SEED to replay a failing schedule.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import URL

from pgflow import start_flow
from pgflow._db import create_engine
from pgflow.schema import install
from tests.helpers.chaos_flows import Chaos, expected_output
from tests.helpers.database import libpq_url, register_flows
from tests.helpers.own_cluster import OwnCluster, own_cluster

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RUNS = 200
TASKS = sum(3 + n % 4 + 2 for n in range(RUNS))
WORKER = [sys.executable, "-m", "pgflow", "--log-format", "json", "run-worker"]
WORKER += ["tests.helpers.chaos_flows", "--concurrency", "10", "--poll-interval", "0.5"]
WORKER += ["--heartbeat-interval", "0.5", "--heartbeat-timeout", "2"]
WORKER += ["--recovery-interval", "0.5", "--no-scheduler"]


EXIT_NO_DATABASE = 3
"""A worker started while the server is down refuses to start with this code (docs/workers.md)."""


class Workers:
    """Worker processes under a test-made supervisor: a killed one is replaced at once, and one
    that refused to start because the server was down is started again (as systemd's
    ``Restart=on-failure`` would); any other exit is a failure."""

    def __init__(self, url: URL, logs: Path) -> None:
        self._url = url
        self._logs = logs
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.killed = 0
        self._restarted: set[int] = set()

    def restart_refused(self) -> None:
        for process, _ in list(self.processes):
            if process.poll() == EXIT_NO_DATABASE and process.pid not in self._restarted:
                self._restarted.add(process.pid)
                self.spawn()

    def unexpected_exits(self) -> list[int]:
        codes = [process.poll() for process, _ in self.processes]
        return [c for c in codes if c is not None and c not in (-signal.SIGKILL, EXIT_NO_DATABASE)]

    def spawn(self) -> None:
        log = self._logs / f"worker-{len(self.processes)}.log"
        with log.open("w") as out:
            process = subprocess.Popen(
                WORKER,
                cwd=ROOT,
                env={**os.environ, "DATABASE_URL": libpq_url(self._url)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes.append((process, log))

    def alive(self) -> list[tuple[subprocess.Popen[bytes], Path]]:
        return [(p, log) for p, log in self.processes if p.poll() is None]

    def kill_one_holding_work(self, rng: random.Random, deadline: float) -> int:
        """kill -9 a serving process while it holds started tasks; returns how many it held."""
        while True:
            holding = [
                (process, held)
                for process, log in self.alive()
                if (held := started_tasks(self._url, worker_ids(log))) > 0
            ]
            if holding:
                break
            assert time.monotonic() < deadline, "no worker process held a started task to kill"
            time.sleep(0.05)
        process, held = rng.choice(holding)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        self.killed += 1
        self.spawn()
        return held

    def stop_all(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)

    def diagnostics(self) -> str:
        parts = []
        for process, log in self.processes:
            tail = log.read_text(errors="replace").splitlines()[-15:]
            parts.append(f"--- pid {process.pid} exit {process.poll()}\n" + "\n".join(tail))
        return "\n".join(parts)


def events(log: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and f'"{name}"' in line:
            try:
                event = json.loads(line)
            except ValueError:  # a line still being written
                continue
            if event.get("event") == name:
                found.append(event)
    return found


def scalar_rows(url: URL, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """A query on a fresh connection, retried while the server restarts."""
    deadline = time.monotonic() + 30
    while True:
        try:
            with psycopg.connect(libpq_url(url), connect_timeout=3) as connection:
                return connection.execute(statement, params).fetchall()
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def worker_ids(log: Path) -> list[str]:
    started = events(log, "worker.started")
    return list(started[0]["worker_ids"]) if started else []


def started_tasks(url: URL, workers: list[str] | None = None) -> int:
    """Tasks started and not yet reported (by these workers, when given)."""
    [(count,)] = scalar_rows(
        url,
        "SELECT count(*) FROM pgflow.step_tasks WHERE status = 'started'"
        + ("" if workers is None else " AND last_worker_id::text = ANY(%s)"),
        None if workers is None else (workers,),
    )
    return int(count)


def completed_tasks(url: URL) -> int:
    [(count,)] = scalar_rows(
        url, "SELECT count(*) FROM pgflow.step_tasks WHERE status = 'completed'"
    )
    return int(count)


def serving(url: URL, log: Path) -> bool:
    """The process logged worker.started and all its rows heartbeated in the last 5 s."""
    started = events(log, "worker.started")
    if len(started) != 1:
        return False
    fresh = {
        str(worker_id)
        for (worker_id,) in scalar_rows(
            url,
            "SELECT worker_id FROM pgflow.workers WHERE deprecated_at IS NULL"
            " AND last_heartbeat_at > now() - interval '5 seconds'",
        )
    }
    return set(started[0]["worker_ids"]) <= fresh


def restart_with_work_running(cluster: OwnCluster, rng: random.Random, deadline: float) -> int:
    """Stop PostgreSQL (fast or immediate) while tasks are started, start it again; returns
    how many tasks were started at the stop."""
    while (running := started_tasks(cluster.url)) == 0:
        assert time.monotonic() < deadline, "no task was running to restart the server under"
        time.sleep(0.05)
    cluster.stop(rng.choice(["fast", "immediate"]))
    time.sleep(rng.uniform(0.5, 2.0))
    cluster.start()
    return running


@pytest.fixture
def cluster() -> Iterator[OwnCluster]:
    with own_cluster() as started:
        yield started


def test_runs_complete_exactly_once_through_kill_9_and_a_server_restart(
    cluster: OwnCluster, tmp_path: Path
) -> None:
    seed = int(os.environ.get("PGFLOW_CHAOS_SEED", str(time.time_ns())))
    rng = random.Random(seed)  # noqa: S311 - a replayable schedule, not security
    url = cluster.url
    install(url)
    engine = create_engine(url)
    register_flows(engine, Chaos)
    with engine.begin() as connection:
        run_ids = [start_flow(connection, Chaos, {"n": n}) for n in range(RUNS)]
    engine.dispose()

    # The chaos: two kill -9s and two restarts (fast or immediate), each when a random share of
    # the work is done and while tasks run (each records how many it caught started).
    chaos: list[tuple[float, str]] = sorted(
        (rng.uniform(0.05, 0.8), what) for what in ("kill", "kill", "restart", "restart")
    )
    caught: dict[str, list[int]] = {"kill": [], "restart": []}
    workers = Workers(url, tmp_path)
    done_log: list[str] = []
    try:
        for _ in range(3):
            workers.spawn()
        deadline = time.monotonic() + 150
        while chaos:
            share, what = chaos[0]
            if completed_tasks(url) >= share * TASKS:
                chaos.pop(0)
                if what == "kill":
                    caught[what].append(workers.kill_one_holding_work(rng, deadline))
                else:
                    caught[what].append(restart_with_work_running(cluster, rng, deadline))
                done_log.append(f"{what} at {share:.0%} with {caught[what][-1]} tasks started")
            assert time.monotonic() < deadline, f"stuck before {what} at {share:.0%}"
            workers.restart_refused()
            time.sleep(0.1)
        while completed_tasks(url) < TASKS:
            assert time.monotonic() < deadline, "the runs did not all complete in time"
            workers.restart_refused()
            time.sleep(0.2)

        assert [len(caught["kill"]), len(caught["restart"])] == [2, 2], done_log
        assert all(count > 0 for counts in caught.values() for count in counts), done_log
        runs = dict(
            scalar_rows(url, "SELECT run_id, output FROM pgflow.runs WHERE status = 'completed'")
        )
        assert sorted(runs) == sorted(run_ids)
        assert all(runs[run_id] == expected_output(n) for n, run_id in enumerate(run_ids))
        # Each task completed exactly once: one row per task, every one completed, and every
        # step's counters at zero (a second completion of a task would drive them below).
        tasks = scalar_rows(url, "SELECT status, count(*) FROM pgflow.step_tasks GROUP BY status")
        assert tasks == [("completed", TASKS)]
        [(steps, off)] = scalar_rows(
            url,
            "SELECT count(*), count(*) FILTER (WHERE status <> 'completed' OR remaining_tasks <> 0)"
            " FROM pgflow.step_states",
        )
        assert (steps, off) == (RUNS * 4, 0)

        # No worker left alive without serving: every live process (a replacement may still be
        # starting on a loaded machine) comes to heartbeat, and none crashed.
        workers.restart_refused()
        assert workers.unexpected_exits() == []
        alive = workers.alive()
        assert len(alive) == 3
        serving_deadline = time.monotonic() + 60
        while not all(serving(url, log) for _, log in alive):
            assert time.monotonic() < serving_deadline, "a live worker process is not serving"
            time.sleep(0.5)
        for _, log in alive:
            assert not events(log, "worker.crashed")
    except AssertionError as failure:
        states = scalar_rows(url, "SELECT status, count(*) FROM pgflow.step_tasks GROUP BY status")
        raise AssertionError(
            f"{failure}\nseed {seed}; chaos done: {done_log}; killed {workers.killed}\n"
            f"tasks by status: {states}\n{workers.diagnostics()}"
        ) from failure
    finally:
        workers.stop_all()
