"""A limit changed while workers run takes effect at once, without restarting them: a per-key
concurrency limit raised from 2 to 4 mid-backlog (extension/0080's set_concurrency_limit, as a
migration applies it), measured by the handlers' own start/end records."""

from __future__ import annotations

import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow.client import enqueue
from tests.acceptance.test_concurrency_limit_processes import (
    LIMITED,
    events,
    intervals,
    most_at_once,
)
from tests.acceptance.test_worker_processes import WorkerFactory, spawn_worker
from tests.helpers.database import register_flows
from tests.helpers.limited_flows import TenantSync
from tests.helpers.process_flows import SlowStep, TenSteps
from tests.helpers.waiting import wait_until

__all__ = ["spawn_worker"]


def test_raising_a_limit_while_workers_run(
    pgflow_engine: Engine, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    register_flows(pgflow_engine, TenantSync, TenSteps, SlowStep)
    log = tmp_path / "calls.jsonl"
    workers = [spawn_worker("--concurrency", "4", *LIMITED) for _ in range(2)]
    with pgflow_engine.begin() as connection:
        for n in range(20):
            enqueue(
                connection, TenantSync, {"tenant": "a", "n": n, "log": str(log), "seconds": 0.5}
            )

    def ended() -> int:
        return sum(1 for e in events(log) if e["event"] == "end")

    wait_until(lambda: ended() >= 4, timeout=120, what="four calls to end under the limit of 2")
    with pgflow_engine.begin() as connection:
        connection.execute(
            sa.text(
                "SELECT pgflow_python.set_concurrency_limit('tenant_sync', NULL, 4, "
                "ARRAY['tenant'])"
            )
        )
    changed_at = time.time()
    wait_until(lambda: ended() == 20, timeout=180, what="every call to end")

    calls = intervals(log, None, 0.0)["a"]
    before = [(start, min(end, changed_at)) for start, end in calls if start < changed_at]
    after = [(max(start, changed_at), end) for start, end in calls if end > changed_at]
    assert most_at_once(before) == 2
    assert most_at_once(after) == 4  # the new limit, used, by the same workers
    assert all(w.poll() is None for w in workers)
