"""Schedules, as docs/schedules.md shows them: declared on a class, created at run time, fired by a
worker, paused and triggered by hand.

    python examples/scheduling.py    # DATABASE_URL, else a local or embedded PostgreSQL
"""

from __future__ import annotations

import time
from typing import Any

import anyio
import anyio.to_thread
import sqlalchemy as sa

from pgflow import Context, Flow, Job, step
from pgflow.client import wait_for_run
from pgflow.compiler import compile_flow
from pgflow.dsl import definition_of
from pgflow.schedules import (
    Cron,
    create_schedule,
    get_schedule,
    list_schedules,
    pause_schedule,
    sync_schedules,
    trigger_schedule,
)
from pgflow.schema import install
from pgflow.testing import temporary_database
from pgflow.worker import Worker, WorkerOptions


class NightlyReport(
    Flow,
    slug="nightly_report",
    schedule=Cron("0 3 * * *", input={"full": True}, timezone="Europe/Paris"),
):
    @step
    def build(self, input: dict[str, Any], ctx: Context) -> str:
        # input == {"full": True, "scheduled_at": "2026-03-29T03:00:00+02:00"}
        return f"report for {input['scheduled_at']}"


class Digest(
    Job,
    slug="digest",
    schedule=[
        Cron("0 8 * * 1-5", name="digest_morning", timezone="America/New_York"),
        Cron("0 18 * * 1-5", name="digest_evening", timezone="America/New_York"),
    ],
):
    def perform(self, input: dict[str, Any], ctx: Context) -> str:
        return f"digest for {input['scheduled_at']}"


def operate(engine: sa.Engine) -> None:
    """What an application or an operator does at run time."""
    # Without Alembic: store the schedules declared on the classes (autogenerate does this).
    print(sync_schedules(engine, NightlyReport, Digest))

    # A schedule created at run time: every 2 seconds (6 fields: the first one is seconds).
    pulse = create_schedule(
        engine, Digest, Cron("*/2 * * * * *", name="digest_pulse", input={"quick": True})
    )
    print(f"{pulse.name} fires next at {pulse.next_fire_at:%H:%M:%S}")

    # A worker's scheduler fires it; wait for the first run it started.
    for _ in range(100):
        fired = get_schedule(engine, "digest_pulse").last_run_id
        if fired is not None:
            break
        time.sleep(0.1)
    assert fired is not None, "no worker fired digest_pulse within 10 s"
    print(f"digest_pulse started a run: {wait_for_run(engine, fired, timeout=30).status}")

    pause_schedule(engine, "digest_pulse")  # no more ticks until resume_schedule()
    run_id = trigger_schedule(engine, "nightly_report")  # one run now, as the schedule would
    print(f"triggered nightly_report: {wait_for_run(engine, run_id, timeout=30).output}")

    for schedule in list_schedules(engine):
        state = "paused" if schedule.paused else "active"
        print(
            f"{schedule.name:15} {schedule.cron.expression:14} {schedule.cron.timezone:17} {state}"
        )


async def main() -> None:
    with temporary_database() as url:
        install(url)
        engine = sa.create_engine(url)
        with engine.begin() as connection:  # what a migration would apply
            for flow in (NightlyReport, Digest):
                for statement in compile_flow(definition_of(flow)):
                    connection.execute(sa.text(statement))
        # Every worker runs a scheduler unless WorkerOptions(scheduler=False) / --no-scheduler.
        worker = Worker([NightlyReport, Digest], engine, options=WorkerOptions(poll_interval=0.5))
        async with anyio.create_task_group() as group:
            group.start_soon(worker.serve)
            await anyio.to_thread.run_sync(operate, engine)
            worker.stop()
        engine.dispose()


if __name__ == "__main__":
    anyio.run(main)
