"""A rate limit holds for a TypeScript 0.8.1 worker (upstream's readMessages, start_tasks and
complete_task, nothing of ours) and for runs it starts: a start over budget is booked later and
its message stays invisible until then; a read over budget is refused (extension/0082)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from pgflow import Job, RateLimit, enqueue
from tests.acceptance.test_rate_limit_processes import most_in_window
from tests.helpers.database import register_flows
from tests.helpers.node import node_worker, typescript_start


class PacedNode(Job, slug="paced_node", rate_limit=RateLimit(2, per=2)):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


def test_a_typescript_worker_starts_two_every_two_seconds(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, PacedNode)
    for n in range(3):
        enqueue(pgflow_engine, PacedNode, {"n": n})
    typescript_start(pgflow_engine, "paced_node", [{"n": n} for n in range(3, 6)])

    report = node_worker(pgflow_engine, "paced_node")

    starts = [a["at"] for a in report["attempts"]]
    assert report["completed"] == 6
    assert most_in_window(starts, 1.8) <= 2  # 10 % of the period for start latency
    assert max(starts) - min(starts) >= 2 * 2 * 0.9  # three budgets: two periods at least
