"""Schedules fired by worker processes: three workers, one run per tick; kill -9 the one that fired
last and the others go on; pause and resume while they run."""

from __future__ import annotations

import itertools
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from pgflow.schedules import Cron, create_schedule, pause_schedule, resume_schedule
from tests.helpers import database
from tests.helpers.database import register_flows
from tests.helpers.schedule_flows import Tick
from tests.helpers.waiting import wait_until
from tests.helpers.worker_processes import worker_processes

ROOT = Path(__file__).resolve().parents[2]
WORKER_COMMAND = [sys.executable, "-m", "pgflow", "run-worker", "tests.helpers.schedule_flows"]
WORKER_COMMAND += ["--log-format", "json", "--poll-interval", "0.5"]
WorkerFactory = Callable[..., subprocess.Popen[str]]
SECOND = timedelta(seconds=1)


@pytest.fixture
def spawn_worker(pgflow_database: URL, tmp_path: Path) -> Iterator[WorkerFactory]:
    env = {"DATABASE_URL": database.libpq_url(pgflow_database)}
    with worker_processes(WORKER_COMMAND, tmp_path, env) as spawn:
        yield spawn


def fires(engine: Engine, name: str) -> list[dict[str, Any]]:
    """The schedule's fires, oldest first, with the run each started (NULL if none)."""
    with engine.begin() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT f.fire_time, f.fired_by, f.manual, r.run_id, r.input"
                " FROM pgflow_python.schedule_fires AS f"
                " LEFT JOIN pgflow.runs AS r USING (run_id)"
                " WHERE f.schedule_name = :name ORDER BY f.fire_time"
            ),
            {"name": name},
        ).mappings()
        return [dict(row) for row in rows]


def run_count(engine: Engine) -> int:
    with engine.begin() as connection:
        count: int = connection.execute(
            sa.text("SELECT count(*) FROM pgflow.runs WHERE flow_slug = 'tick'")
        ).scalar_one()
        return count


def check_one_run_per_tick(engine: Engine, name: str) -> list[dict[str, Any]]:
    """Every tick from the first fire to the last has exactly one run; explains any failure."""
    found = fires(engine, name)
    times = [fire["fire_time"] for fire in found]
    gaps = [(a, b) for a, b in itertools.pairwise(times) if b - a != SECOND]
    missing_runs = [fire["fire_time"] for fire in found if fire["run_id"] is None]
    scheduled = [fire["input"]["scheduled_at"] for fire in found if fire["input"]]
    summary = (
        f"{len(found)} fires from {times[0] if times else None} to "
        f"{times[-1] if times else None}; by {sorted({f['fired_by'] for f in found})}"
    )
    assert not gaps, f"ticks without a run between {gaps}; {summary}"
    assert not missing_runs, f"fires without a run at {missing_runs}; {summary}"
    assert len(set(scheduled)) == len(scheduled) == len(found), f"duplicate inputs; {summary}"
    return found


def pid_of(fired_by: str) -> int:
    return int(fired_by.rsplit(":", 1)[1])


@pytest.mark.slow
def test_three_workers_fire_each_tick_once_and_survive_a_kill(
    pgflow_engine: Engine, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    register_flows(pgflow_engine, Tick)
    workers = {process.pid: process for process in (spawn_worker() for _ in range(3))}
    logs = sorted(tmp_path.glob("worker-*.log"))
    wait_until(
        lambda: all("scheduler.started" in log.read_text() for log in logs),
        timeout=30,
        what="three workers with their schedulers",
    )
    # "all": a tick a busy machine made late still fires, so any gap would be a real loss.
    create_schedule(pgflow_engine, Tick, Cron("* * * * * *", name="every_second", missed="all"))

    def contended() -> bool:
        found = fires(pgflow_engine, "every_second")
        return len(found) >= 20 and len({f["fired_by"] for f in found}) >= 2

    # Exactly once while several schedulers compete: ticks fired by more than one worker.
    wait_until(
        contended, timeout=90, what="20 ticks of the every-second schedule, by two workers or more"
    )
    before_kill = check_one_run_per_tick(pgflow_engine, "every_second")

    # The worker that fired last is the one most likely to hold the schedule next.
    victim = pid_of(before_kill[-1]["fired_by"])
    workers[victim].send_signal(signal.SIGKILL)
    workers[victim].wait(timeout=10)
    # Read after the kill: the victim may have fired one more tick before the signal landed.
    killed_at = fires(pgflow_engine, "every_second")[-1]["fire_time"]
    survivors = {pid for pid in workers if pid != victim}

    def fired_after_kill() -> list[dict[str, Any]]:
        return [f for f in fires(pgflow_engine, "every_second") if f["fire_time"] > killed_at]

    wait_until(
        lambda: len(fired_after_kill()) >= 5,
        timeout=60,
        what="5 ticks after the kill",
    )
    after = check_one_run_per_tick(pgflow_engine, "every_second")
    assert {pid_of(f["fired_by"]) for f in fired_after_kill()} <= survivors
    assert all(workers[pid].poll() is None for pid in survivors)

    # Pause: a second schedule proves the schedulers keep passing while the first stays quiet.
    paused = pause_schedule(pgflow_engine, "every_second")
    assert paused.paused_at is not None
    create_schedule(pgflow_engine, Tick, Cron("* * * * * *", name="sentinel", missed="all"))
    wait_until(
        lambda: len(fires(pgflow_engine, "sentinel")) >= 3,
        timeout=30,
        what="3 ticks of the sentinel schedule",
    )
    while_paused = fires(pgflow_engine, "every_second")
    assert [f["fire_time"] for f in while_paused if f["fire_time"] > paused.paused_at] == []
    resumed = resume_schedule(pgflow_engine, "every_second")
    assert resumed.next_fire_at is not None
    wait_until(
        lambda: any(
            f["fire_time"] >= resumed.next_fire_at for f in fires(pgflow_engine, "every_second")
        ),
        timeout=30,
        what="the resumed schedule to fire",
    )
    assert run_count(pgflow_engine) == sum(
        len(fires(pgflow_engine, name)) for name in ("every_second", "sentinel")
    )
    # Numbers for the record (shown with -s): fires before and after the kill, by worker.
    by_worker = {
        pid: sum(1 for f in after if pid_of(f["fired_by"]) == pid) for pid in sorted(workers)
    }
    print(
        f"\nexactly-once: {len(before_kill)} ticks with 3 workers, {len(after) - len(before_kill)}"
        f" after kill -9 of {victim}; runs per tick: 1; fires by worker: {by_worker}"
    )
