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
from pgflow._db import create_engine
from pgflow.schedules import Cron, create_schedule
from tests.helpers.database import register_flows
from tests.helpers.workers import running_worker

pytestmark = pytest.mark.anyio

SETTLE = 11.0
"""Seconds from the worker's start to the first count: past its start-up (whose statistics
upkeep analyzes each table in a transaction of its own) and past the 10 s that PostgreSQL may
take to report an idle session's counts."""

WINDOW = 6.0
"""Seconds over which transactions are counted, twice in a row: the lower rate counts, so that
an occasional burst (a pool refilling, a late report) does not fail the test, while a worker
that never rests fails both."""


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
    await anyio.sleep(SETTLE)
    rates = []
    before = await anyio.to_thread.run_sync(transactions, engine)
    started = time.monotonic()
    for _ in range(2):
        await anyio.sleep(WINDOW)
        after = await anyio.to_thread.run_sync(transactions, engine)
        ended = time.monotonic()
        rates.append((after - before) / (ended - started))
        before, started = after, ended
    return min(rates)


@pytest.mark.parametrize("schedules", ["none", "paused"])
async def test_an_idle_worker_with_its_scheduler_on_makes_at_most_5_transactions_a_second(
    pgflow_engine: Engine, schedules: str
) -> None:
    register_flows(pgflow_engine, Idle)
    if schedules == "paused":
        create_schedule(pgflow_engine, Idle, Cron("0 3 * * *", name="nightly"), paused=True)
    # A pooled engine, as `pgflow run-worker` makes (the fixture's engine opens a connection per
    # use, and every connection start is a transaction of its own).
    pooled = create_engine(pgflow_engine.url)
    try:
        async with running_worker(pooled, Idle, poll_interval=2.0) as worker:
            assert worker.options.scheduler
            rate = await transactions_per_second(pgflow_engine)
    finally:
        pooled.dispose()
    assert rate <= 5, f"an idle worker made {rate:.0f} transactions a second"
