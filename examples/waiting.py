"""Waiting on the world, as docs/waiting.md shows: a refund waiting for a person's approval, a
payment waiting for its provider's webhook (which may come early, and twice), and runs that must
end by a deadline.

    python examples/waiting.py    # DATABASE_URL, else a local or embedded PostgreSQL
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
import sqlalchemy as sa
from sqlalchemy.orm import Session

from pgflow import Flow, get_run_with_states, signal, start_flow, step, wait_for_run, wait_step
from pgflow.compiler import compile_flow
from pgflow.dsl import definition_of
from pgflow.errors import RunCancelledError, SignalTooLateError
from pgflow.schema import install
from pgflow.testing import temporary_database
from pgflow.worker import Worker, WorkerOptions


class Refund(Flow, slug="refund"):
    @step
    def draft(self, order: dict[str, Any]) -> dict[str, Any]:
        return {"order": order["id"], "amount": order["amount"]}

    @wait_step(depends_on=[draft], timeout=timedelta(days=3))
    def approval(self) -> None: ...  # a person approves or rejects the draft

    @step(depends_on=[draft, approval])
    def pay(self, deps: dict[str, Any]) -> dict[str, Any]:
        if not deps["approval"]["approved"]:
            return {"refunded": 0, "why": deps["approval"]["note"]}
        return {"refunded": deps["draft"]["amount"]}


class Payment(Flow, slug="payment"):
    @step
    def charge(self, order: dict[str, Any]) -> str:
        return f"pi_{order['id']}"  # the provider's payment id

    @wait_step(depends_on=[charge], timeout=timedelta(hours=1))
    def settled(self) -> None: ...  # the provider's webhook says how the payment ended

    @step(depends_on=[settled])
    def ship(self, deps: dict[str, Any]) -> str:
        return f"shipped ({deps['settled']['status']})"


class Report(Flow, slug="report", run_timeout=timedelta(minutes=30)):
    @step
    async def build(self, input: dict[str, Any]) -> str:
        await anyio.sleep(input["seconds"])  # cancelled at the run's deadline
        return "report.pdf"


def approve_refund(engine: sa.Engine, run_id: uuid.UUID, approved: bool, note: str) -> None:
    # In a web request handler: the signal is part of the request's transaction.
    with Session(engine) as session:
        result = signal(session, run_id, "approval", {"approved": approved, "note": note})
        session.commit()
    print(f"approval: {result.outcome}")


def payment_webhook(bind: Session | sa.Engine, run_id: uuid.UUID, event: dict[str, Any]) -> None:
    # Providers deliver at least once: a repeat changes nothing and says so.
    result = signal(bind, run_id, "settled", {"status": event["status"]})
    print(f"webhook: {result.outcome}")


def wait_until_waiting(engine: sa.Engine, run_id: uuid.UUID, step_slug: str) -> None:
    for _ in range(400):
        run = get_run_with_states(engine, run_id)
        if run is not None and any(
            s.step_slug == step_slug and s.status == "started" for s in run.steps
        ):
            return
        time.sleep(0.05)
    raise TimeoutError(f"{step_slug} of run {run_id} did not start waiting within 20 s")


def wait(engine: sa.Engine) -> None:
    refund = start_flow(engine, Refund, {"id": 7, "amount": 30})
    wait_until_waiting(engine, refund, "approval")  # no worker holds it meanwhile
    approve_refund(engine, refund, approved=True, note="damaged in transit")
    print(f"refund {wait_for_run(engine, refund, timeout=30).output}")

    # A webhook may arrive before the flow reaches the wait: it is kept until then.
    with Session(engine) as session:
        payment = start_flow(session, Payment, {"id": 8})
        payment_webhook(session, payment, {"status": "succeeded"})
        session.commit()
    payment_webhook(engine, payment, {"status": "succeeded"})
    print(f"payment {wait_for_run(engine, payment, timeout=30).output}")
    try:
        payment_webhook(engine, uuid.uuid4(), {"status": "succeeded"})
    except LookupError as error:  # UnknownRunError
        print(f"unknown run: {type(error).__name__}")
    refused = start_flow(engine, Refund, {"id": 9, "amount": 5}, deadline=timedelta(seconds=1))
    wait_until_waiting(engine, refused, "approval")
    try:
        wait_for_run(engine, refused, timeout=30)
    except RunCancelledError as error:
        print(f"refund 9: {error.reason}".split(" by ")[0])
    try:
        approve_refund(engine, refused, approved=True, note="too late")
    except SignalTooLateError as error:
        print(f"late approval: the run is {error.run_status}")

    report = start_flow(engine, Report, {"seconds": 3600}, deadline=timedelta(seconds=2))
    try:
        wait_for_run(engine, report, timeout=30)
    except RunCancelledError as error:
        print(f"report: {error.reason}".split(" by ")[0])


async def main() -> None:
    with temporary_database() as url:
        install(url)
        engine = sa.create_engine(url)
        with engine.begin() as connection:  # what a migration would apply
            for flow in (Refund, Payment, Report):
                for statement in compile_flow(definition_of(flow)):
                    connection.execute(sa.text(statement))
        options = WorkerOptions(
            concurrency=1, poll_interval=0.2, shutdown_timeout=2, deadline_check_interval=0.2
        )
        worker = Worker([Refund, Payment, Report], engine, options=options)
        async with anyio.create_task_group() as group:
            group.start_soon(worker.serve)
            await anyio.to_thread.run_sync(wait, engine)
            worker.stop()
        engine.dispose()


if __name__ == "__main__":
    anyio.run(main)
