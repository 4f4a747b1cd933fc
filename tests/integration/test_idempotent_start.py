"""start_flow / enqueue with an idempotency key: one run per (flow, key), also under races."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import create_async_engine

import sql_only_flow
from pgflow import Flow, Job, enqueue, enqueue_async, start_flow, start_flow_async, step
from pgflow.operations import prune
from tests.helpers.database import register_flows
from tests.helpers.waiting import wait_until


class Order(Flow, slug="order"):
    @step
    def charge(self, input: dict[str, Any]) -> int:
        return 1


class Receipt(Job, slug="receipt"):
    def perform(self, input: dict[str, Any]) -> None: ...


def runs_of(engine: Engine, flow_slug: str) -> list[uuid.UUID]:
    with engine.begin() as connection:
        return list(
            connection.execute(
                sa.text("SELECT run_id FROM pgflow.runs WHERE flow_slug = :f"), {"f": flow_slug}
            ).scalars()
        )


def blocked_on_a_lock(engine: Engine, application_name: str) -> bool:
    with engine.begin() as connection:
        return bool(
            connection.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = :name AND wait_event_type = 'Lock'"
                ),
                {"name": application_name},
            ).scalar_one()
        )


def test_the_same_key_returns_the_first_run(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Order, Receipt)
    first = start_flow(pgflow_engine, Order, {"id": 42}, idempotency_key="order-42")
    again = start_flow(pgflow_engine, Order, {"id": 42, "retry": True}, idempotency_key="order-42")
    other = start_flow(pgflow_engine, Order, {"id": 43}, idempotency_key="order-43")
    assert again == first != other
    assert sorted(runs_of(pgflow_engine, "order")) == sorted([first, other])
    # Keys are per flow: the same key names another run of another flow.
    job = enqueue(pgflow_engine, Receipt, {"id": 42}, idempotency_key="order-42")
    assert job != first
    assert enqueue(pgflow_engine, Receipt, {}, idempotency_key="order-42", delay=60) == job


def test_a_key_repeated_with_a_delay_keeps_the_first_enqueue_as_it_was(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Receipt)
    job = enqueue(pgflow_engine, Receipt, {}, idempotency_key="r-1")
    enqueue(pgflow_engine, Receipt, {}, idempotency_key="r-1", delay=3600)
    with pgflow_engine.begin() as connection:
        visible = connection.execute(
            sa.text("SELECT count(*) FROM pgmq.q_receipt WHERE vt <= now() + interval '5 s'")
        ).scalar_one()
    assert visible == 1
    assert runs_of(pgflow_engine, "receipt") == [job]


def test_concurrent_starts_with_one_key_make_one_run(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Order)
    barrier = threading.Barrier(8)

    def start_one(_: int) -> uuid.UUID:
        with pgflow_engine.begin() as connection:
            barrier.wait(timeout=10)
            return start_flow(connection, Order, {"id": 7}, idempotency_key="order-7")

    with ThreadPoolExecutor(max_workers=8) as pool:
        started = set(pool.map(start_one, range(8)))
    assert len(started) == 1
    assert runs_of(pgflow_engine, "order") == list(started)


def test_a_start_waiting_on_an_uncommitted_key_returns_that_run_or_its_own(
    pgflow_engine: Engine,
) -> None:
    """The second start blocks on the first's uncommitted key: if the first commits, the second
    returns the first's run; if it rolls back, the second starts a run of its own."""
    register_flows(pgflow_engine, Order)
    second_engine = sa.create_engine(
        pgflow_engine.url,
        poolclass=sa.pool.NullPool,
        connect_args={"application_name": "second_start"},
    )
    try:
        for outcome in ("commit", "rollback"):
            key = f"order-{outcome}"
            with pgflow_engine.connect() as first:
                transaction = first.begin()
                first_run = start_flow(first, Order, {"who": "first"}, idempotency_key=key)
                with ThreadPoolExecutor(max_workers=1) as pool:
                    second = pool.submit(
                        start_flow, second_engine, Order, {"who": "second"}, idempotency_key=key
                    )
                    wait_until(
                        lambda: blocked_on_a_lock(pgflow_engine, "second_start"),
                        timeout=10,
                        what="the second start to wait for the first one's key",
                    )
                    assert not second.done()
                    if outcome == "commit":
                        transaction.commit()
                        assert second.result(timeout=10) == first_run
                    else:
                        transaction.rollback()
                        second_run = second.result(timeout=10)
                        assert second_run != first_run
                        with pgflow_engine.begin() as connection:
                            stored = connection.execute(
                                sa.text("SELECT input FROM pgflow.runs WHERE run_id = :r"),
                                {"r": second_run},
                            ).scalar_one()
                        assert stored == {"who": "second"}
    finally:
        second_engine.dispose()
    assert len(runs_of(pgflow_engine, "order")) == 2


def test_a_pruned_run_frees_its_key(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Order)
    first = start_flow(pgflow_engine, Order, {}, idempotency_key="k")
    sql_only_flow.drive(pgflow_engine, "order", {"charge": ([], lambda task: 1)}, first)
    assert prune(pgflow_engine, older_than=timedelta(0)).runs == 1
    assert start_flow(pgflow_engine, Order, {}, idempotency_key="k") != first


def test_key_and_run_id_together_are_refused(pgflow_engine: Engine) -> None:
    with pytest.raises(ValueError, match="run_id or idempotency_key, not both"):
        start_flow(pgflow_engine, Order, {}, run_id=uuid.uuid4(), idempotency_key="k")
    with pytest.raises(ValueError, match="idempotency_key must not be empty"):
        start_flow(pgflow_engine, Order, {}, idempotency_key="")


@pytest.mark.anyio
async def test_async_starts_share_keys_with_sync_ones(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Order, Receipt)
    engine = create_async_engine(pgflow_engine.url, poolclass=sa.pool.NullPool)
    try:
        run = await start_flow_async(engine, Order, {}, idempotency_key="a")
        assert await start_flow_async(engine, Order, {}, idempotency_key="a") == run
        assert start_flow(pgflow_engine, Order, {}, idempotency_key="a") == run
        job = await enqueue_async(engine, Receipt, {}, idempotency_key="a")
        assert enqueue(pgflow_engine, Receipt, {}, idempotency_key="a") == job
    finally:
        await engine.dispose()
