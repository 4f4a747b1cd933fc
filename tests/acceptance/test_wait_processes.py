"""Waiting, proven with processes (issue 23's durability claims, docs/waiting.md): waits hold no
slot of a worker process with concurrency 1; waits survive every worker killed with SIGKILL and
a PostgreSQL restart, and signals then complete them all; duplicate signals sent at the same
moment by separate processes complete the step once. (A signal in a Session that rolls back is
tests/integration/test_wait_steps.py's: it is one transaction, no process boundary in it.)"""

from __future__ import annotations

import json
import os
import signal as signals
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from pgflow import SignalOutcome, signal, start_flow
from pgflow._db import create_engine
from pgflow.schema import install
from tests.helpers.database import libpq_url, register_flows
from tests.helpers.own_cluster import OwnCluster, own_cluster
from tests.helpers.wait_flows import Approval, Quick, Webhook
from tests.helpers.waiting import wait_until
from tests.helpers.worker_processes import Spawn, worker_processes

WORKER = [sys.executable, "-m", "pgflow", "--log-format", "json", "run-worker"]
WORKER += ["tests.helpers.wait_flows", "--poll-interval", "0.5", "--no-scheduler"]
WORKER += ["--heartbeat-interval", "0.5", "--heartbeat-timeout", "2", "--recovery-interval", "0.5"]
WAITING = 20
SIGNAL = [sys.executable, "-m", "pgflow", "runs", "signal"]


def rows(engine: Engine, statement: str, **params: Any) -> list[Any]:
    with engine.begin() as connection:
        return list(connection.execute(sa.text(statement), params))


def open_waits(engine: Engine) -> int:
    [(count,)] = rows(
        engine,
        "SELECT count(*) FROM pgflow_python.waits w JOIN pgflow.step_tasks t"
        " USING (run_id, step_slug, task_index) WHERE w.ended_at IS NULL AND t.status = 'started'",
    )
    return int(count)


def run_statuses(engine: Engine, run_ids: list[uuid.UUID]) -> dict[str, int]:
    return {
        str(status): int(count)
        for status, count in rows(
            engine,
            "SELECT status, count(*) FROM pgflow.runs WHERE run_id = ANY(:ids) GROUP BY status",
            ids=run_ids,
        )
    }


def held_by_workers(engine: Engine) -> int:
    """Tasks a worker holds (started, with a worker): a wait has none."""
    [(count,)] = rows(
        engine,
        "SELECT count(*) FROM pgflow.step_tasks"
        " WHERE status = 'started' AND last_worker_id IS NOT NULL",
    )
    return int(count)


def assert_completed_once(engine: Engine, run_ids: list[uuid.UUID]) -> None:
    """Every run completed with the signal's output, each of its tasks completed exactly once."""
    outputs = dict(
        rows(engine, "SELECT run_id, output FROM pgflow.runs WHERE run_id = ANY(:ids)", ids=run_ids)
    )
    assert all(outputs[run_id]["pay"]["approved_by"] == str(run_id) for run_id in run_ids)
    tasks = rows(
        engine,
        "SELECT step_slug, status, count(*) FROM pgflow.step_tasks WHERE run_id = ANY(:ids)"
        " GROUP BY step_slug, status ORDER BY step_slug",
        ids=run_ids,
    )
    assert [tuple(t) for t in tasks] == [
        ("approval", "completed", len(run_ids)),
        ("draft", "completed", len(run_ids)),
        ("pay", "completed", len(run_ids)),
    ]
    [(off,)] = rows(
        engine,
        "SELECT count(*) FROM pgflow.step_states WHERE run_id = ANY(:ids)"
        " AND (status <> 'completed' OR remaining_tasks <> 0)",
        ids=run_ids,
    )
    assert off == 0


@pytest.fixture
def spawn(tmp_path: Path, pgflow_database: URL) -> Iterator[Spawn]:
    with worker_processes(WORKER, tmp_path, {"DATABASE_URL": libpq_url(pgflow_database)}) as s:
        yield s


@pytest.mark.slow
def test_twenty_waiting_runs_hold_no_slot_of_a_worker_process_with_concurrency_one(
    pgflow_engine: Engine, spawn: Spawn
) -> None:
    register_flows(pgflow_engine, Approval, Quick, Webhook)
    worker = spawn("--concurrency", "1")
    waiting = [start_flow(pgflow_engine, Approval, {"n": n}) for n in range(WAITING)]
    wait_until(lambda: open_waits(pgflow_engine) == WAITING, timeout=60, what="20 waits")

    # Other runs go through the one slot while the twenty wait.
    quick = [start_flow(pgflow_engine, Quick, {"n": n}) for n in range(30)]
    wait_until(
        lambda: run_statuses(pgflow_engine, quick) == {"completed": 30},
        timeout=60,
        what="the other runs to finish",
    )
    assert open_waits(pgflow_engine) == WAITING
    assert run_statuses(pgflow_engine, waiting) == {"started": WAITING}
    assert held_by_workers(pgflow_engine) == 0

    for run_id in waiting:
        assert signal(pgflow_engine, run_id, "approval", {"by": str(run_id)}).outcome is (
            SignalOutcome.COMPLETED
        )
    wait_until(
        lambda: run_statuses(pgflow_engine, waiting) == {"completed": WAITING},
        timeout=60,
        what="the signalled runs to finish",
    )
    assert_completed_once(pgflow_engine, waiting)
    assert worker.poll() is None
    worker.send_signal(signals.SIGTERM)
    assert worker.wait(timeout=30) == 0


@pytest.mark.slow
def test_waits_survive_kill_9_of_every_worker_and_a_server_restart(tmp_path: Path) -> None:
    with own_cluster() as cluster:
        _kill_restart_then_signal(cluster, tmp_path)


def _kill_restart_then_signal(cluster: OwnCluster, tmp_path: Path) -> None:
    install(cluster.url)
    engine = create_engine(cluster.url)
    register_flows(engine, Approval, Quick, Webhook)
    env = {"DATABASE_URL": libpq_url(cluster.url)}
    with worker_processes(WORKER, tmp_path, env) as spawn:
        first = [spawn("--concurrency", "4") for _ in range(2)]
        run_ids = [start_flow(engine, Approval, {"n": n}) for n in range(WAITING)]
        wait_until(lambda: open_waits(engine) == WAITING, timeout=60, what="20 waits")
        for process in first:
            process.send_signal(signals.SIGKILL)
            assert process.wait(timeout=10) == -signals.SIGKILL
        engine.dispose()
        cluster.stop("immediate")
        cluster.start()

        # Everything the waits are is in the database, which came back with them.
        engine = create_engine(cluster.url)
        assert open_waits(engine) == WAITING
        assert run_statuses(engine, run_ids) == {"started": WAITING}
        # Half the signals arrive while no worker runs: they complete their steps at once.
        for run_id in run_ids[: WAITING // 2]:
            assert signal(engine, run_id, "approval", {"by": str(run_id)}).outcome is (
                SignalOutcome.COMPLETED
            )
        second = [spawn("--concurrency", "4") for _ in range(2)]
        for run_id in run_ids[WAITING // 2 :]:
            assert signal(engine, run_id, "approval", {"by": str(run_id)}).outcome is (
                SignalOutcome.COMPLETED
            )
        wait_until(
            lambda: run_statuses(engine, run_ids) == {"completed": WAITING},
            timeout=90,
            what="every run to complete after the signals",
        )
        assert_completed_once(engine, run_ids)
        assert [p.poll() for p in second] == [None, None]
    engine.dispose()


def test_duplicate_signals_from_separate_processes_at_once_complete_the_step_once(
    pgflow_engine: Engine, pgflow_database: URL
) -> None:
    register_flows(pgflow_engine, Webhook)
    run_id = start_flow(pgflow_engine, Webhook, None)
    assert open_waits(pgflow_engine) == 1

    env = {**os.environ, "DATABASE_URL": libpq_url(pgflow_database)}
    # Every sender is made to reach the database before any is applied: the run's row is held
    # locked until all eight wait on it (signal() locks it first), then let go at once.
    with pgflow_engine.connect() as holder, holder.begin():
        holder.execute(
            sa.text("SELECT 1 FROM pgflow.runs WHERE run_id = :id FOR UPDATE"), {"id": run_id}
        )
        senders = [
            subprocess.Popen(
                [
                    *SIGNAL,
                    str(run_id),
                    "settled",
                    "--output",
                    json.dumps({"by": f"n{n}"}),
                    "--json",
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(8)
        ]

        def all_blocked() -> bool:
            # The first waits on the holder, the others on the first (the row's tuple lock).
            [(blocked,)] = rows(
                pgflow_engine,
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database() AND query LIKE '%pgflow_python.signal(%'",
            )
            return int(blocked) == 8

        wait_until(all_blocked, timeout=120, what="eight senders waiting on the run")
    results = [sender.communicate(timeout=120) for sender in senders]
    assert [sender.returncode for sender in senders] == [0] * 8, results
    outcomes = [json.loads(stdout)["outcome"] for stdout, _ in results]
    assert sorted(outcomes) == ["already_signalled"] * 7 + ["completed"]
    winner = outcomes.index("completed")
    [(output, status)] = rows(
        pgflow_engine,
        "SELECT output, status FROM pgflow.step_tasks WHERE run_id = :id AND step_slug = 'settled'",
        id=run_id,
    )
    assert (output, status) == ({"by": f"n{winner}"}, "completed")
    [(received,)] = rows(
        pgflow_engine, "SELECT count(*) FROM pgflow_python.signals WHERE run_id = :id", id=run_id
    )
    assert received == 1
    # The step after it was queued once: one task, one message.
    [(queued,)] = rows(
        pgflow_engine,
        "SELECT count(*) FROM pgflow.step_tasks WHERE run_id = :id AND step_slug = 'ship'",
        id=run_id,
    )
    assert queued == 1
