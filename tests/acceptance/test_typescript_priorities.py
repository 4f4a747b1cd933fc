"""Priorities hold for a TypeScript 0.8.1 worker (it reads with upstream's readMessages, in
msg_id order) and apply to runs it starts (the flow's default): extension/0081 writes the
priority into the message id when the message is sent, whoever sends it."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from pgflow import Job, enqueue
from tests.helpers.database import register_flows
from tests.helpers.node import node_worker, typescript_start


class RankedNode(Job, slug="ranked_node", priority=1):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


def test_a_typescript_worker_reads_by_priority(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, RankedNode)
    for n in range(3):
        enqueue(pgflow_engine, RankedNode, {"n": n}, priority=0)
    typescript_start(pgflow_engine, "ranked_node", [{"n": 10}, {"n": 11}])  # the default, 1
    enqueue(pgflow_engine, RankedNode, {"n": 20}, priority=5)
    enqueue(pgflow_engine, RankedNode, {"n": -1}, priority=-1)

    report = node_worker(pgflow_engine, "ranked_node", readSize=1)

    assert [a["input"]["run"]["n"] for a in report["attempts"]] == [20, 10, 11, 0, 1, 2, -1]
    assert report["completed"] == 7
