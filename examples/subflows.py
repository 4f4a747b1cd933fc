"""Subflows, as docs/waiting.md shows: an order fans out one ChargeCard run per line, waits for
all of them, and sums up their outputs; a declined card fails its child and the order, and
resuming the order resumes that child in place.

    python examples/subflows.py    # DATABASE_URL, else a local or embedded PostgreSQL
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio
import anyio.to_thread
import sqlalchemy as sa

from pgflow import Flow, start_flow, step, subflow, wait_for_run
from pgflow.compiler import compile_flow
from pgflow.dsl import definition_of
from pgflow.errors import RunFailedError
from pgflow.operations import describe_run, resume_run
from pgflow.schema import install
from pgflow.testing import temporary_database
from pgflow.worker import Worker, WorkerOptions

DECLINED: set[str] = {"4000-0000-0000-0002"}  # the card issuer's view, for the example


class ChargeCard(Flow, slug="charge_card", max_attempts=1):
    @step
    def authorize(self, charge: dict[str, Any]) -> str:
        if charge["card"] in DECLINED:
            raise RuntimeError(f"card {charge['card'][-4:]} declined")
        return f"auth_{charge['line']}"

    @step(depends_on=[authorize])
    def capture(self, deps: dict[str, Any]) -> dict[str, Any]:
        return {"captured": deps["authorize"]}


class Order(Flow, slug="order", max_attempts=1):
    @step
    def lines(self, order: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"line": n, "card": card} for n, card in enumerate(order["cards"])]

    @subflow(ChargeCard, array=lines)  # one ChargeCard run per line, all at once
    def charges(self, line: dict[str, Any]) -> dict[str, Any]:
        return {"line": line["line"], "card": line["card"]}  # the child run's input

    @step(depends_on=[charges])
    def receipt(self, deps: dict[str, Any]) -> list[str]:
        return [charge["capture"]["captured"] for charge in deps["charges"]]


def fan_out(engine: sa.Engine) -> None:
    order = start_flow(engine, Order, {"cards": ["4242-4242-4242-4242"] * 3})
    print("receipt", wait_for_run(engine, order, timeout=60).output)
    details = describe_run(engine, order)
    assert details is not None
    print("children", [child.status for child in details.children])


def declined_then_resumed(engine: sa.Engine) -> None:
    order = start_flow(engine, Order, {"cards": ["4242-4242-4242-4242", "4000-0000-0000-0002"]})
    try:
        wait_for_run(engine, order, timeout=60)
    except RunFailedError as error:
        print("order failed:", str(error.error_message).split(" failed: ")[-1])
    child = failed_child(engine, order)
    DECLINED.clear()  # the customer fixed their card
    with engine.begin() as connection:
        resume_run(connection, order)  # resumes the failed child run in place
    print("resumed", wait_for_run(engine, order, timeout=60).output)
    print("same child:", failed_child(engine, order) == child)


def failed_child(engine: sa.Engine, order: uuid.UUID) -> uuid.UUID | None:
    details = describe_run(engine, order)
    assert details is not None
    return details.children[1].run_id


async def main() -> None:
    with temporary_database() as url:
        install(url)
        engine = sa.create_engine(url)
        with engine.begin() as connection:  # what a migration would apply
            for flow in (ChargeCard, Order):
                for statement in compile_flow(definition_of(flow)):
                    connection.execute(sa.text(statement))
        options = WorkerOptions(poll_interval=0.2, shutdown_timeout=2)
        worker = Worker([Order, ChargeCard], engine, options=options)
        async with anyio.create_task_group() as group:
            group.start_soon(worker.serve)
            await anyio.to_thread.run_sync(fan_out, engine)
            await anyio.to_thread.run_sync(declined_then_resumed, engine)
            worker.stop()
        engine.dispose()


if __name__ == "__main__":
    anyio.run(main)
