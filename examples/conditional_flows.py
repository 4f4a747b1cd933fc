"""Conditional steps, as docs/defining-flows.md shows: a support ticket routed to one of two
branches, an optional enrichment that may fail without failing the run, and a refund that only
runs (with everything after it) for paying customers.

    python examples/conditional_flows.py    # DATABASE_URL, else a local or embedded PostgreSQL
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.to_thread
import sqlalchemy as sa

from pgflow import Flow, get_run_with_states, start_flow, step, wait_for_run
from pgflow.compiler import compile_flow
from pgflow.dsl import definition_of
from pgflow.schema import install
from pgflow.testing import temporary_database
from pgflow.worker import Worker, WorkerOptions


class Ticket(Flow, slug="ticket", max_attempts=2, base_delay=1):
    @step
    def classify(self, input: dict[str, Any]) -> dict[str, str]:
        return {"tier": "paid" if input["plan"] != "free" else "free"}

    # Runs only when classify's output contains {"tier": "paid"}; skipped otherwise.
    @step(depends_on=[classify], if_={"classify": {"tier": "paid"}})
    def call_back(self, deps: dict[str, Any]) -> str:
        return "phone call booked"

    @step(depends_on=[classify], if_not={"classify": {"tier": "paid"}})
    def self_service(self, deps: dict[str, Any]) -> str:
        return "help article sent"

    # Best effort: after its last attempt the step is skipped, not the run failed.
    @step(depends_on=[classify], retries_exhausted="skip")
    def enrich(self, deps: dict[str, Any]) -> dict[str, str]:
        raise ConnectionError("CRM unavailable")

    # A skipped dependency's key is absent: read it with .get().
    @step(depends_on=[call_back, self_service, enrich])
    def close(self, deps: dict[str, Any]) -> dict[str, Any]:
        return {
            "answer": deps.get("call_back") or deps.get("self_service"),
            "enriched": "enrich" in deps,
        }


class Refund(Flow, slug="refund", max_attempts=1):
    # A root step's condition is matched against the flow input. skip-cascade: when unmet,
    # this step and everything downstream of it are skipped; the run still completes.
    @step(if_={"paid": True}, when_unmet="skip-cascade")
    def reverse_charge(self, input: dict[str, Any]) -> str:
        return f"refunded {input['amount']}"

    @step(depends_on=[reverse_charge])
    def notify(self, deps: dict[str, Any]) -> str:
        return "customer notified"

    @step
    def log(self, input: dict[str, Any]) -> str:
        return "logged"


def operate(engine: sa.Engine) -> None:
    for flow, flow_input in [
        (Ticket, {"plan": "pro"}),
        (Ticket, {"plan": "free"}),
        (Refund, {"paid": False, "amount": 30}),
    ]:
        with engine.begin() as connection:
            run_id = start_flow(connection, flow, flow_input)
        run = wait_for_run(engine, run_id, timeout=30)
        states = get_run_with_states(engine, run_id)
        assert states is not None
        skipped = [s.step_slug for s in states.steps if s.status == "skipped"]
        print(f"{definition_of(flow).slug} {flow_input}: {run.output} skipped={skipped}")


async def main() -> None:
    with temporary_database() as url:
        install(url)
        engine = sa.create_engine(url)
        with engine.begin() as connection:  # what a migration would apply
            for flow in (Ticket, Refund):
                for statement in compile_flow(definition_of(flow)):
                    connection.execute(sa.text(statement))
        options = WorkerOptions(poll_interval=0.2, shutdown_timeout=2)
        worker = Worker([Ticket, Refund], engine, options=options)
        async with anyio.create_task_group() as group:
            group.start_soon(worker.serve)
            await anyio.to_thread.run_sync(operate, engine)
            worker.stop()
        engine.dispose()


if __name__ == "__main__":
    anyio.run(main)
