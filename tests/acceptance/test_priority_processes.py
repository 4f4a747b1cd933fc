"""Priorities across a real worker process (extension/0081): runs enqueued with a higher
priority behind a backlog start before the backlog's rest, by the handlers' own records."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from pgflow.client import enqueue
from tests.acceptance.test_worker_processes import WorkerFactory, spawn_worker
from tests.helpers.database import register_flows
from tests.helpers.process_flows import SlowStep, TenSteps
from tests.helpers.ranked_flows import PacedJob, RankedJob
from tests.helpers.waiting import wait_until

__all__ = ["spawn_worker"]


def starts(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def test_urgent_runs_overtake_a_backlog(
    pgflow_engine: Engine, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    register_flows(pgflow_engine, RankedJob, PacedJob, TenSteps, SlowStep)
    log = tmp_path / "starts.jsonl"
    common = {"log": str(log), "seconds": 0.2}
    with pgflow_engine.begin() as connection:
        for n in range(20):
            enqueue(connection, RankedJob, {"n": n, "kind": "backlog", **common})
    spawn_worker("--concurrency", "1", "tests.helpers.ranked_flows")
    wait_until(lambda: len(starts(log)) >= 2, timeout=60, what="the backlog to start")
    with pgflow_engine.begin() as connection:
        for n in range(3):
            enqueue(connection, RankedJob, {"n": n, "kind": "urgent", **common}, priority=10)
    started_by_then = len(starts(log))
    wait_until(lambda: len(starts(log)) == 23, timeout=120, what="every run to start")

    order = [e["kind"] for e in starts(log)]
    urgent_at = [i for i, kind in enumerate(order) if kind == "urgent"]
    # Without priorities they would start last (at 20, 21, 22). The worker (one at a time) may
    # have claimed one more backlog run while the urgent ones were being enqueued.
    assert urgent_at[0] <= started_by_then + 1, order
    assert urgent_at == list(range(urgent_at[0], urgent_at[0] + 3)), order
    # ... and the backlog kept its own order.
    backlog = [e["n"] for e in starts(log) if e["kind"] == "backlog"]
    assert backlog == list(range(20))
