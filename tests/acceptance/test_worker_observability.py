"""What operators see of worker processes: the Prometheus endpoint and the run outcome events in
their JSON logs."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

import sql_only_flow
from tests.helpers import database
from tests.helpers.database import register_flows
from tests.helpers.observed_flows import Picky
from tests.helpers.process_flows import TenSteps
from tests.helpers.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
WORKER_COMMAND = [sys.executable, "-m", "pgflow", "--log-format", "json", "run-worker"]
WORKER_COMMAND += ["--poll-interval", "0.5"]
Spawn = Callable[..., tuple[subprocess.Popen[str], Path]]


@pytest.fixture
def spawn_worker(pgflow_database: URL, tmp_path: Path) -> Iterator[Spawn]:
    processes: list[subprocess.Popen[str]] = []

    def spawn(*args: str) -> tuple[subprocess.Popen[str], Path]:
        env = {**os.environ, "DATABASE_URL": database.libpq_url(pgflow_database)}
        log_path = tmp_path / f"worker-{len(processes)}.log"
        with log_path.open("w") as log:  # a file: an unread pipe would block the worker
            process = subprocess.Popen(
                [*WORKER_COMMAND, *args], cwd=ROOT, env=env, stdout=log, stderr=log, text=True
            )
        processes.append(process)
        return process, log_path

    yield spawn
    for process in processes:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text: str = response.read().decode()
            return text
    except OSError:
        return ""  # not serving yet


def samples(metrics: str, name: str) -> dict[tuple[str, ...], float]:
    """One metric family in Prometheus' text format: ``{(label values...): value}``, with
    pgflow's labels only (flow, step, outcome), in that order."""
    pattern = re.compile(rf"^{re.escape(name)}\{{(.*)\}} (\S+)$", re.MULTILINE)
    found = {}
    for labels, value in pattern.findall(metrics):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        key = tuple(
            pairs[label]
            for label in ("pgflow_flow_slug", "pgflow_step_slug", "pgflow_outcome")
            if label in pairs
        )
        found[key] = float(value)
    return found


def test_the_worker_serves_prometheus_metrics(pgflow_engine: Engine, spawn_worker: Spawn) -> None:
    register_flows(pgflow_engine, TenSteps)
    port = free_port()
    worker, log = spawn_worker(
        "tests.helpers.process_flows:TenSteps",
        "--metrics-port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
    )
    with pgflow_engine.begin() as connection:
        for n in range(3):
            sql_only_flow.start_run(connection, "ten_steps", {"n": n})

    def completed_tasks() -> float:
        assert worker.poll() is None, log.read_text()
        outcomes = samples(scrape(port), "pgflow_task_outcomes_total")
        return sum(v for labels, v in outcomes.items() if labels[-1] == "completed")

    # 3 runs of 12 tasks each (the map step has 3 elements).
    wait_until(lambda: completed_tasks() == 36, timeout=60, what="36 completed tasks")
    metrics = scrape(port)
    assert samples(metrics, "pgflow_run_outcomes_total") == {("ten_steps", "completed"): 3.0}
    durations = samples(metrics, "pgflow_task_duration_seconds_count")
    assert sum(durations.values()) == 36
    assert durations[("ten_steps", "each", "completed")] == 9
    assert samples(metrics, "pgflow_queue_oldest_ready_age_seconds").keys() == {("ten_steps",)}
    # Every message is archived once its run completed.
    wait_until(
        lambda: samples(scrape(port), "pgflow_queue_depth") == {("ten_steps",): 0.0},
        what="an empty queue",
    )


def events(log: Path, name: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line["event"] == name]


def test_each_ended_run_is_announced_once_by_the_worker_that_ended_it(
    pgflow_engine: Engine, spawn_worker: Spawn
) -> None:
    register_flows(pgflow_engine, TenSteps, Picky)
    flows = ("tests.helpers.process_flows:TenSteps", "tests.helpers.observed_flows:Picky")
    workers = [spawn_worker(*flows) for _ in range(2)]
    with pgflow_engine.begin() as connection:
        completing = {
            str(sql_only_flow.start_run(connection, "ten_steps", {"n": n})) for n in range(100)
        }
        picky = {n: str(sql_only_flow.start_run(connection, "picky", {"n": n})) for n in range(20)}

    def all_ended() -> bool:
        for process, log in workers:
            assert process.poll() is None, log.read_text()
        with pgflow_engine.begin() as connection:
            started: int = connection.execute(
                sa.text("SELECT count(*) FROM pgflow.runs WHERE status = 'started'")
            ).scalar_one()
        return started == 0

    wait_until(all_ended, timeout=240, what="every run to end")
    for process, _ in workers:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    completed = [e for _, log in workers for e in events(log, "run.completed")]
    failed = [e for _, log in workers for e in events(log, "run.failed")]
    expected_completed = completing | {run for n, run in picky.items() if n % 2 == 0}
    expected_failed = {run for n, run in picky.items() if n % 2}
    assert Counter(e["run_id"] for e in completed) == Counter(expected_completed)
    assert Counter(e["run_id"] for e in failed) == Counter(expected_failed)
    # Both workers ended runs: the events come from whichever report ended each run.
    assert all(events(log, "run.completed") for _, log in workers)
    assert all(isinstance(e["duration_ms"], float) and e["duration_ms"] > 0 for e in completed)
    assert {(e["flow"], e["step"]) for e in failed} == {("picky", "accept")}
    assert {e["error"] for e in failed} == {
        f"NonRetryableError: {n} is odd" for n in range(1, 20, 2)
    }
