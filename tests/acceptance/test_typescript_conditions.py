"""Conditions hold for a TypeScript 0.8.1 worker (it calls upstream's start_tasks, complete_task
and fail_task directly): a step whose condition is unmet never reaches it, and a step skipped on
exhaustion through upstream's fail_task lets the run complete. The one visible difference:
0.8.1's start_tasks gives a skipped dependency's key as null (a Python worker gets no key)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import Flow, start_flow, step
from tests.helpers.database import register_flows
from tests.helpers.node import node_worker


class Branching(Flow, slug="branching", max_attempts=1):
    @step
    def classify(self, input: dict[str, Any]) -> dict[str, str]:
        return {"kind": "big" if input["size"] > 10 else "small"}

    @step(depends_on=[classify], if_={"classify": {"kind": "big"}})
    def big(self, deps: dict[str, Any]) -> str:
        return "python big"

    @step(depends_on=[classify], if_={"classify": {"kind": "small"}})
    def small(self, deps: dict[str, Any]) -> str:
        return "python small"

    @step(depends_on=[classify], retries_exhausted="skip")
    def optional(self, deps: dict[str, Any]) -> str:
        return "python optional"

    @step(depends_on=[big, small, optional])
    def report(self, deps: dict[str, Any]) -> dict[str, Any]:
        return deps


def test_a_typescript_worker_never_sees_a_skipped_step(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Branching)
    with pgflow_engine.begin() as connection:
        big = start_flow(connection, Branching, {"size": 50})
        small = start_flow(connection, Branching, {"size": 1})

    report = node_worker(pgflow_engine, "branching", fail=["optional"])

    attempts = Counter(a["step"] for a in report["attempts"])
    assert attempts == {"classify": 2, "big": 1, "small": 1, "optional": 2, "report": 2}
    with pgflow_engine.begin() as connection:
        runs = {
            row.run_id: row
            for row in connection.execute(sa.text("SELECT run_id, status, output FROM pgflow.runs"))
        }
        states = {
            (row.run_id, row.step_slug): row.status
            for row in connection.execute(
                sa.text("SELECT run_id, step_slug, status FROM pgflow.step_states")
            )
        }
    assert runs[big].status == runs[small].status == "completed"
    assert runs[big].output == {
        "report": {"run": {"size": 50}, "big": "node big", "small": None, "optional": None}
    }
    assert runs[small].output == {
        "report": {"run": {"size": 1}, "big": None, "small": "node small", "optional": None}
    }
    assert states[(big, "small")] == states[(small, "big")] == "skipped"
    assert states[(big, "optional")] == states[(small, "optional")] == "skipped"
