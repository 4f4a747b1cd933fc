"""Wait steps and a TypeScript 0.8.1 worker on the same flow: the wait step's task has no message,
so the worker never receives it (it runs the flow's other steps as usual); a signal completes
the step through upstream's complete_task and the worker runs what follows."""

from __future__ import annotations

from collections import Counter
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import Flow, signal, start_flow, step, wait_step
from tests.helpers.database import register_flows
from tests.helpers.node import node_worker


class Approval(Flow, slug="ts_approval"):
    @step
    def draft(self, input: dict[str, Any]) -> dict[str, Any]:
        return {"by": "python", "amount": input["amount"]}

    @wait_step(depends_on=[draft])
    def approve(self) -> None: ...

    @step(depends_on=[draft, approve])
    def publish(self, deps: dict[str, Any]) -> dict[str, Any]:
        return deps


def test_a_typescript_worker_never_receives_a_wait_step(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Approval)
    runs = [start_flow(pgflow_engine, Approval, {"amount": n}) for n in (10, 20)]
    early = start_flow(pgflow_engine, Approval, {"amount": 30})
    assert str(signal(pgflow_engine, early, "approve", {"by": "early"}).outcome) == "kept"

    # The runs stay started while they wait, so the worker polls until maxSeconds.
    first = node_worker(pgflow_engine, "ts_approval", maxSeconds=4)
    assert Counter(a["step"] for a in first["attempts"]) == {"draft": 3, "publish": 1}

    for index, run_id in enumerate(runs):
        signal(pgflow_engine, run_id, "approve", {"by": f"person {index}"})
    second = node_worker(pgflow_engine, "ts_approval")
    assert Counter(a["step"] for a in second["attempts"]) == {"publish": 2}

    with pgflow_engine.begin() as connection:
        outputs: dict[Any, Any] = dict(
            connection.execute(
                sa.text("SELECT run_id, output FROM pgflow.runs WHERE status = 'completed'")
            ).all()
        )
    assert outputs == {
        runs[0]: {"publish": {"amount": 10, "approved_by": "person 0"}},
        runs[1]: {"publish": {"amount": 20, "approved_by": "person 1"}},
        early: {"publish": {"amount": 30, "approved_by": "early"}},
    }
