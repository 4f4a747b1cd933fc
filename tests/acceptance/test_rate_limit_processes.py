"""A rate limit held across worker processes (extension/0082), measured by the handlers' own
start records: 6 starts per 3 seconds per tenant, over sliding windows, within 10 %, with
three workers that could start far more; another tenant's budget is its own."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine

from pgflow.client import enqueue
from tests.acceptance.test_priority_processes import starts
from tests.acceptance.test_worker_processes import WorkerFactory, spawn_worker
from tests.helpers.database import register_flows
from tests.helpers.process_flows import SlowStep, TenSteps
from tests.helpers.ranked_flows import PacedJob, RankedJob
from tests.helpers.waiting import wait_until

__all__ = ["spawn_worker"]

LIMIT, PERIOD = 6, 3.0


def most_in_window(times: list[float], window: float) -> int:
    times = sorted(times)
    return max(sum(1 for t in times[i:] if t < start + window) for i, start in enumerate(times))


def test_six_starts_per_three_seconds_across_processes(
    pgflow_engine: Engine, spawn_worker: WorkerFactory, tmp_path: Path
) -> None:
    register_flows(pgflow_engine, RankedJob, PacedJob, TenSteps, SlowStep)
    log = tmp_path / "starts.jsonl"
    for _ in range(3):
        spawn_worker("--concurrency", "8", "tests.helpers.ranked_flows")
    # The workers are still starting: the first periods' bookings pass before any of them
    # reads, and the reads are what keeps those from starting together.
    for n in range(30):
        enqueue(pgflow_engine, PacedJob, {"tenant": "a", "n": n, "log": str(log)})
    for n in range(6):
        enqueue(pgflow_engine, PacedJob, {"tenant": "b", "n": n, "log": str(log)})
    wait_until(lambda: len(starts(log)) == 36, timeout=120, what="every run to start")

    a = [e["at"] for e in starts(log) if e["kind"] == "a"]
    b = [e["at"] for e in starts(log) if e["kind"] == "b"]
    # Never more than the limit in a window (10 % of the period allowed for start latency) ...
    assert most_in_window(a, PERIOD * 0.9) <= LIMIT
    # ... and the budget used: 30 starts are 5 budgets, the last one 4 periods after the first.
    span = max(a) - min(a)
    assert 4 * PERIOD * 0.9 <= span <= 4 * PERIOD * 1.1, span
    # b's six started in its own budget, at once, while a's backlog waited.
    assert max(b) - min(b) < PERIOD * 0.5
    assert min(b) - min(a) < PERIOD
