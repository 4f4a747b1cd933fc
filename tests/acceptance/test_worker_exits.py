"""A worker process never stays alive without serving, and one SIGTERM is enough to end it
(issue "Worker robustness", defects 2 and 11)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import URL, Engine

from tests.helpers import database
from tests.helpers.database import register_flows
from tests.helpers.stuck_flows import IgnoresCancellation, StuckSync
from tests.helpers.waiting import wait_until
from tests.helpers.workers import start

ROOT = Path(__file__).resolve().parents[2]
COMMAND = [sys.executable, "-m", "pgflow", "run-worker", "tests.helpers.stuck_flows"]
COMMAND += ["--log-format", "json", "--poll-interval", "0.5"]


class WorkerProcess:
    def __init__(self, url: URL, log_path: Path, *args: str) -> None:
        self.log_path = log_path
        env = {**os.environ, "DATABASE_URL": database.libpq_url(url)}
        with log_path.open("w") as log:
            self.process = subprocess.Popen(
                [*COMMAND, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
            )

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text().splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found

    def named(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events() if e.get("event") == event]

    def exit_code(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the worker process is still alive after {timeout} s; its log:\n"
                + self.log_path.read_text()[-4000:]
            ) from None


@pytest.fixture
def spawn(pgflow_database: URL, tmp_path: Path) -> Iterator[Any]:
    started: list[WorkerProcess] = []

    def spawn(*args: str) -> WorkerProcess:
        worker = WorkerProcess(pgflow_database, tmp_path / f"worker-{len(started)}.log", *args)
        started.append(worker)
        wait_until(lambda: worker.named("worker.started"), timeout=30, what="worker.started")
        return worker

    yield spawn
    for worker in started:
        if worker.process.poll() is None:
            worker.process.kill()
        worker.process.wait(timeout=10)


def test_stuck_sync_handlers_keep_threads_bounded_then_the_process_exits_crashed(
    pgflow_engine: Engine, spawn: Any
) -> None:
    register_flows(pgflow_engine, StuckSync, IgnoresCancellation)
    worker = spawn("--concurrency", "2", "--shutdown-timeout", "5")
    for n in range(6):
        start(pgflow_engine, StuckSync, n)
    # Two handlers time out and keep their threads (Python cannot stop them); with every
    # handler thread stuck the process can do nothing more, so it crashes for its supervisor.
    assert worker.exit_code(timeout=60) == 1
    assert not worker.named("worker.stopped")
    [crashed] = worker.named("worker.crashed")
    assert "handler threads still run sync handlers past their timeout" in crashed["error"]
    # Only two handlers ever started: a stuck thread keeps its slot (it used to be released,
    # and each timeout added a thread).
    assert len(worker.named("task.started")) == 2
    assert len(worker.named("task.failed")) == 2


def test_one_sigterm_ends_a_worker_whose_timed_out_sync_handler_still_runs(
    pgflow_engine: Engine, spawn: Any
) -> None:
    register_flows(pgflow_engine, StuckSync, IgnoresCancellation)
    worker = spawn("--concurrency", "3", "--shutdown-timeout", "2")
    start(pgflow_engine, StuckSync, 1)
    wait_until(lambda: worker.named("task.failed"), timeout=30, what="the handler's timeout")
    started = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    assert worker.exit_code(timeout=20) == 0
    assert time.monotonic() - started < 15
    assert worker.named("worker.stopped")


@pytest.mark.slow
def test_an_async_handler_that_swallows_cancellation_cannot_keep_the_process_alive(
    pgflow_engine: Engine, spawn: Any
) -> None:
    register_flows(pgflow_engine, StuckSync, IgnoresCancellation)
    worker = spawn("--shutdown-timeout", "1")
    start(pgflow_engine, IgnoresCancellation, {})
    # Timeout 3 s, then 5 s of grace, then the crash cannot finish (the handler swallows
    # that cancellation too), so the process exits anyway after shutdown_timeout + 10 s.
    assert worker.exit_code(timeout=60) == 70
    assert worker.named("task.cancellation_ignored")
    assert worker.named("worker.exit_forced")
