"""An idle worker stays idle (issue "Robustness, round two", N2): with the scheduler on (the
default) and no schedule, a worker with nothing to do commits a handful of transactions per
second, not one every few milliseconds."""

from __future__ import annotations

import time

import anyio
import anyio.to_thread
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import Job
from pgflow.schedules import Cron, create_schedule
from tests.helpers.database import register_flows
from tests.helpers.workers import running_worker

pytestmark = pytest.mark.anyio

WINDOW = 6.0
"""Seconds over which transactions are counted."""


class Idle(Job, slug="idle_job"):
    def perform(self, input: object) -> None: ...


def transactions(engine: Engine) -> int:
    """Commits and rollbacks of the test's database so far, read from another database (so
    that reading does not count)."""
    database = engine.url.database
    other = sa.create_engine(engine.url.set(database="postgres"), poolclass=sa.pool.NullPool)
    try:
        with other.connect() as connection:
            connection.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
            return int(
                connection.execute(
                    sa.text(
                        "SELECT xact_commit + xact_rollback FROM pg_stat_database"
                        " WHERE datname = :name"
                    ),
                    {"name": database},
                ).scalar_one()
            )
    finally:
        other.dispose()


async def transactions_per_second(engine: Engine) -> float:
    await anyio.sleep(1.5)  # past start-up, and PostgreSQL's stats flush (at most 1 s late)
    before = await anyio.to_thread.run_sync(transactions, engine)
    started = time.monotonic()
    await anyio.sleep(WINDOW)
    after = await anyio.to_thread.run_sync(transactions, engine)
    return (after - before) / (time.monotonic() - started)


@pytest.mark.parametrize("schedules", ["none", "paused"])
async def test_an_idle_worker_with_its_scheduler_on_makes_at_most_5_transactions_a_second(
    pgflow_engine: Engine, schedules: str
) -> None:
    register_flows(pgflow_engine, Idle)
    if schedules == "paused":
        create_schedule(pgflow_engine, Idle, Cron("0 3 * * *", name="nightly"), paused=True)
    async with running_worker(pgflow_engine, Idle, poll_interval=2.0) as worker:
        assert worker.options.scheduler
        rate = await transactions_per_second(pgflow_engine)
    assert rate <= 5, f"an idle worker made {rate:.0f} transactions a second"
