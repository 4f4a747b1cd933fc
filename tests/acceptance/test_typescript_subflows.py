"""Subflow steps and TypeScript 0.8.1 workers on the same flows: the subflow step has no message,
so a TypeScript worker of the parent flow never receives it (it runs the parent's other steps);
a Python worker's subflow starter runs the step's method and starts the children, which a
TypeScript worker of the child flow runs; each child's end completes the parent's step through
upstream's complete_task, and the TypeScript worker runs what follows."""

from __future__ import annotations

from collections import Counter
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import Flow, start_flow, step, subflow
from pgflow.worker._session import ServedFlow
from pgflow.worker._subflows import _claim, _start_one
from tests.helpers.database import register_flows
from tests.helpers.node import node_worker


class Charge(Flow, slug="ts_charge"):
    @step
    def charge(self, input: dict[str, Any]) -> dict[str, Any]:
        return {"by": "python", "charged": input["amount"]}


class Checkout(Flow, slug="ts_checkout"):
    @step
    def cart(self, input: dict[str, Any]) -> dict[str, Any]:
        return {"by": "python", "total": sum(input["prices"])}

    @subflow(Charge, depends_on=[cart])
    def payment(self, deps: dict[str, Any]) -> dict[str, Any]:
        return {"amount": deps["cart"]["total"]}

    @step(depends_on=[payment])
    def receipt(self, deps: dict[str, Any]) -> dict[str, Any]:
        return {"paid": deps["payment"]["charge"]["charged"]}


async def start_children(engine: Engine) -> int:
    """One round of a Python worker's subflow starter for ts_checkout (its queue untouched)."""
    served = ServedFlow.of(Checkout)
    starts = await anyio.to_thread.run_sync(_claim, engine, ["ts_checkout"], 70, 10)
    for start in starts:
        await _start_one(
            engine, served.instance, Checkout.__pgflow_subflows__["payment"], Checkout, start
        )
    return len(starts)


@pytest.mark.anyio
async def test_a_typescript_worker_never_receives_a_subflow_step(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Charge, Checkout)
    runs = [start_flow(pgflow_engine, Checkout, {"prices": p}) for p in ([1, 2], [10])]

    # The runs stay started while payment waits, so the worker polls until maxSeconds.
    first = node_worker(pgflow_engine, "ts_checkout", maxSeconds=4)
    assert Counter(a["step"] for a in first["attempts"]) == {"cart": 2}

    assert await start_children(pgflow_engine) == 2
    assert await start_children(pgflow_engine) == 0  # started once
    children = node_worker(pgflow_engine, "ts_charge")
    assert Counter(a["step"] for a in children["attempts"]) == {"charge": 2}

    second = node_worker(pgflow_engine, "ts_checkout")
    assert Counter(a["step"] for a in second["attempts"]) == {"receipt": 2}

    with pgflow_engine.begin() as connection:
        outputs: dict[Any, Any] = dict(
            connection.execute(
                sa.text(
                    "SELECT run_id, output FROM pgflow.runs"
                    " WHERE status = 'completed' AND flow_slug = 'ts_checkout'"
                )
            ).all()
        )
    assert outputs == {runs[0]: {"receipt": {"paid": 3}}, runs[1]: {"receipt": {"paid": 10}}}
