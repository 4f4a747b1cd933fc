"""Operating runs, as docs/operations.md shows: an idempotent checkout, a cancelled export, a
failed checkout resumed in place, a flaky job retried as a new run, listing and pruning.

    python examples/operating_runs.py    # DATABASE_URL, else a local or embedded PostgreSQL
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
import sqlalchemy as sa

from pgflow import (
    Context,
    Flow,
    Job,
    enqueue,
    get_run,
    get_run_with_states,
    map_step,
    start_flow,
    step,
    wait_for_run,
)
from pgflow.compiler import compile_flow
from pgflow.dsl import definition_of
from pgflow.errors import RunCancelledError, RunFailedError
from pgflow.operations import (
    cancel_run,
    describe_run,
    list_runs,
    prune,
    resume_run,
    retry_run,
)
from pgflow.schema import install
from pgflow.testing import temporary_database
from pgflow.worker import Worker, WorkerOptions

PRICES = {"chair": 120, "lamp": 35, "desk": 400}
OUT_OF_STOCK = {"lamp"}
PRICED: list[str] = []  # every execution of Checkout.price, to show what ran again


class Checkout(Flow, slug="checkout", max_attempts=1):
    @map_step  # one task per item of the order
    def price(self, item: dict[str, Any], ctx: Context) -> int:
        PRICED.append(item["sku"])
        if item["sku"] in OUT_OF_STOCK:
            raise RuntimeError(f"{item['sku']} is out of stock")
        return PRICES[item["sku"]] * int(item["qty"])

    @step(depends_on=[price])
    def charge(self, deps: dict[str, list[int]], ctx: Context) -> dict[str, int]:
        return {"charged": sum(deps["price"])}


class Export(Job, slug="export"):
    async def perform(self, input: dict[str, Any], ctx: Context) -> str:
        await anyio.sleep(input["minutes"] * 60)  # cancelled long before that
        return "exported"


class Notify(Job, slug="notify", max_attempts=1):
    attempts = 0

    def perform(self, input: dict[str, Any], ctx: Context) -> str:
        Notify.attempts += 1
        if Notify.attempts == 1:
            raise ConnectionError("mail server unavailable")
        return f"sent to {input['to']}"


def wait_until_started(engine: sa.Engine, run_id: Any) -> None:
    for _ in range(200):
        run = get_run_with_states(engine, run_id)
        if run is not None and any(task.status == "started" for task in run.tasks):
            return
        time.sleep(0.05)
    raise TimeoutError(f"no worker started run {run_id} within 10 s")


def operate(engine: sa.Engine) -> None:
    # Idempotent start: a double-submitted request gets the run the first one started.
    order = [{"sku": "chair", "qty": 2}, {"sku": "lamp", "qty": 1}, {"sku": "desk", "qty": 1}]
    run_id = start_flow(engine, Checkout, order, idempotency_key="order-42")
    again = start_flow(engine, Checkout, order, idempotency_key="order-42")
    print(f"same run for order-42: {again == run_id}")

    try:
        wait_for_run(engine, run_id, timeout=30)
    except RunFailedError as error:
        print(f"checkout failed at {error.step_slug}: {error.error_message}")

    # Resume in place: the chair keeps its price, only the lamp and the desk run again.
    OUT_OF_STOCK.clear()  # restocked
    priced_before = len(PRICED)
    resumed = resume_run(engine, run_id)
    print(f"resume: {resumed.outcome}, {resumed.tasks_requeued} task(s) queued again")
    print(f"checkout {wait_for_run(engine, run_id, timeout=30).output}")
    print(f"priced again: {sorted(PRICED[priced_before:])}")

    # Cancel: the sleeping handler is cancelled, the run ends failed and marked cancelled.
    export = enqueue(engine, Export, {"minutes": 60})
    wait_until_started(engine, export)
    cancelled = cancel_run(engine, export, reason="customer closed the tab")
    print(f"cancel: {cancelled.outcome}, {cancelled.tasks_cancelled} task(s) ended")
    try:
        wait_for_run(engine, export, timeout=30)
    except RunCancelledError as error:
        print(f"export: {error}".replace(str(export), "<run>"))
    print(f"cancel again: {cancel_run(engine, export).outcome}")

    # Retry: a new run of the same job with the same input, linked to the failed one.
    notify = enqueue(engine, Notify, {"to": "ada@example.org"})
    try:
        wait_for_run(engine, notify, timeout=30)
    except RunFailedError as error:
        print(f"notify failed: {error.error_message}")
    retried = retry_run(engine, notify)
    assert retried.new_run_id is not None, retried.outcome
    retry = wait_for_run(engine, retried.new_run_id, timeout=30)
    print(f"retry: {retry.output}, restart of the failed run: {retry.restart_of_run_id == notify}")
    failed = get_run(engine, notify)
    print(f"failed run points to its retry: {failed and failed.retried_as_run_id == retry.run_id}")

    # Operators: list runs, show one, prune old ones.
    for summary in list_runs(engine, limit=10):
        print(f"{summary.flow_slug:9} {'cancelled' if summary.cancelled else summary.status}")
    details = describe_run(engine, run_id)  # None for an unknown run id
    for step_summary in details.steps if details else ():
        print(
            f"{step_summary.step_slug}: {step_summary.status}, "
            f"{step_summary.completed_tasks}/{step_summary.tasks} tasks, "
            f"{step_summary.attempts} attempts"
        )

    preview = prune(engine, older_than=timedelta(days=30), dry_run=True)
    print(f"older than 30 days: {preview.runs} run(s)")
    report = prune(engine, older_than=timedelta(0), flows=["notify"])
    print(f"pruned {report.runs} notify run(s) and {report.step_tasks} task(s)")


async def main() -> None:
    with temporary_database() as url:
        install(url)
        engine = sa.create_engine(url)
        with engine.begin() as connection:  # what a migration would apply
            for flow in (Checkout, Export, Notify):
                for statement in compile_flow(definition_of(flow)):
                    connection.execute(sa.text(statement))
        # One handler at a time, so the example prints the same lines on every run.
        options = WorkerOptions(concurrency=1, poll_interval=0.2, shutdown_timeout=2)
        worker = Worker([Checkout, Export, Notify], engine, options=options)
        async with anyio.create_task_group() as group:
            group.start_soon(worker.serve)
            await anyio.to_thread.run_sync(operate, engine)
            worker.stop()
        engine.dispose()


if __name__ == "__main__":
    anyio.run(main)
