"""Waiting for a run survives the server going away: a terminated backend, a restarted server.

The restart runs on a PostgreSQL cluster this module starts on a port of its own
(tests/helpers/own_cluster.py); the shared server is never stopped.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from pgflow import (
    Run,
    RunStatus,
    start_flow,
    start_flow_and_wait,
    start_flow_and_wait_async,
    telemetry,
    wait_for_run,
    wait_for_run_async,
)
from pgflow._db import create_engine
from pgflow.errors import DatabaseUnavailableError
from pgflow.schema import install
from tests.helpers.client_flows import GREETING_HANDLERS, Greeting, driving, waiter_is_waiting
from tests.helpers.database import register_flows
from tests.helpers.own_cluster import OwnCluster, own_cluster
from tests.helpers.waiting import wait_until

TIMEOUT = 90.0
WAITING = "SELECT pid FROM pg_stat_activity WHERE query LIKE '%A run''s status alone%'"


@pytest.fixture
def reconnects() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    unsubscribe = telemetry.subscribe(
        lambda event, fields: events.append(fields) if event == "run.wait_reconnecting" else None
    )
    yield events
    unsubscribe()


def fresh_engine(url: URL) -> Engine:
    """No pool: nothing survives a restart to fail the test's own statements."""
    return create_engine(url, poolclass=sa.pool.NullPool)


def waiting_pids(engine: Engine) -> set[int]:
    with engine.begin() as connection:
        return set(connection.execute(sa.text(WAITING)).scalars())


def terminate(engine: Engine, pids: set[int]) -> None:
    with engine.begin() as connection:
        for pid in pids:
            connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


def in_thread(call: Callable[[], Run]) -> tuple[ThreadPoolExecutor, Future[Run]]:
    pool = ThreadPoolExecutor(1)
    return pool, pool.submit(call)


def test_wait_for_run_reconnects_after_its_backend_is_terminated(
    engine: Engine, reconnects: list[dict[str, Any]]
) -> None:
    run_id = start_flow(engine, Greeting, {"name": "ada"})
    pool, waiting = in_thread(lambda: wait_for_run(engine, run_id, timeout=TIMEOUT))
    with pool:
        wait_until(lambda: waiter_is_waiting(engine), what="the waiter to wait")
        first = waiting_pids(engine)
        terminate(engine, first)
        wait_until(lambda: waiting_pids(engine) - first, what="the waiter to reconnect")
        with driving(engine, Greeting, GREETING_HANDLERS):
            run = waiting.result(TIMEOUT)
    assert run.status is RunStatus.COMPLETED
    assert run.output == {"greeting": "Hello, Ada!"}
    assert reconnects[0]["run_id"] == str(run_id)
    assert reconnects[0]["attempt"] == 1


@pytest.mark.anyio
async def test_wait_for_run_async_reconnects_after_its_backend_is_terminated(
    engine: Engine, pgflow_database: URL, reconnects: list[dict[str, Any]]
) -> None:
    async_engine = create_async_engine(pgflow_database, poolclass=sa.pool.NullPool)
    run_id = start_flow(engine, Greeting, {"name": "bob"})
    terminated: set[int] = set()

    def terminate_then_drive() -> None:
        wait_until(lambda: waiter_is_waiting(engine), what="the waiter to wait")
        terminated.update(waiting_pids(engine))
        terminate(engine, terminated)
        wait_until(lambda: waiting_pids(engine) - terminated, what="the waiter to reconnect")
        with driving(engine, Greeting, GREETING_HANDLERS):
            wait_until(lambda: finished(engine, run_id), what="the run to end")

    helper = threading.Thread(target=terminate_then_drive, daemon=True)
    helper.start()
    try:
        run = await wait_for_run_async(async_engine, run_id, timeout=TIMEOUT)
    finally:
        helper.join(TIMEOUT)
        await async_engine.dispose()
    assert terminated
    assert run.output == {"greeting": "Hello, Bob!"}
    assert len(reconnects) >= 1


def finished(engine: Engine, run_id: uuid.UUID) -> bool:
    with engine.begin() as connection:
        status = connection.execute(
            sa.text("SELECT status FROM pgflow.runs WHERE run_id = :id"), {"id": run_id}
        ).scalar()
    return bool(status != "started")


# -- a server that stops and starts again ---------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[OwnCluster]:
    with own_cluster() as started:
        install(started.url)
        engine = fresh_engine(started.url)
        try:
            register_flows(engine, Greeting)
        finally:
            engine.dispose()
        yield started


@pytest.fixture
def on_cluster(cluster: OwnCluster) -> Iterator[Engine]:
    """A pooled engine on the test-owned cluster, as an application would have."""
    engine = create_engine(cluster.url)
    try:
        yield engine
    finally:
        engine.dispose()
        if not (cluster.data / "postmaster.pid").exists():
            cluster.start()  # a test that failed halfway leaves the server up for the next


def restart_while_waiting(cluster: OwnCluster) -> None:
    """Once the waiter waits: stop the server (it disconnects everyone), start it again."""
    observer = fresh_engine(cluster.url)
    try:
        wait_until(lambda: waiter_is_waiting(observer), what="the waiter to wait")
        cluster.stop("fast")
        cluster.start()
    finally:
        observer.dispose()


def drive_until_finished(cluster: OwnCluster, run_id: Callable[[], uuid.UUID | None]) -> None:
    driver = fresh_engine(cluster.url)
    try:
        wait_until(lambda: run_id() is not None, what="the run to start")
        with driving(driver, Greeting, GREETING_HANDLERS):
            wait_until(lambda: finished(driver, run_id() or uuid.uuid4()), what="the run to end")
    finally:
        driver.dispose()


def only_run_id(cluster: OwnCluster) -> uuid.UUID | None:
    engine = fresh_engine(cluster.url)
    try:
        with engine.begin() as connection:
            found: uuid.UUID | None = connection.execute(
                sa.text("SELECT run_id FROM pgflow.runs WHERE status = 'started'")
            ).scalar()
            return found
    finally:
        engine.dispose()


def test_start_flow_and_wait_survives_a_server_restart(
    cluster: OwnCluster, on_cluster: Engine, reconnects: list[dict[str, Any]]
) -> None:
    pool, waiting = in_thread(
        lambda: start_flow_and_wait(on_cluster, Greeting, {"name": "grace"}, timeout=TIMEOUT)
    )
    with pool:
        restart_while_waiting(cluster)
        drive_until_finished(cluster, lambda: only_run_id(cluster))
        run = waiting.result(TIMEOUT)
    assert run.output == {"greeting": "Hello, Grace!"}
    assert reconnects, "the waiter should have lost its connection and reconnected"


@pytest.mark.anyio
async def test_start_flow_and_wait_async_survives_a_server_restart(
    cluster: OwnCluster, reconnects: list[dict[str, Any]]
) -> None:
    async_engine: AsyncEngine = create_async_engine(cluster.url)

    def restart_then_drive() -> None:
        restart_while_waiting(cluster)
        drive_until_finished(cluster, lambda: only_run_id(cluster))

    helper = threading.Thread(target=restart_then_drive, daemon=True)
    helper.start()
    try:
        run = await start_flow_and_wait_async(
            async_engine, Greeting, {"name": "hedy"}, timeout=TIMEOUT
        )
    finally:
        helper.join(TIMEOUT)
        await async_engine.dispose()
    assert run.output == {"greeting": "Hello, Hedy!"}
    assert reconnects


def test_a_server_that_stays_away_ends_the_wait_with_a_clear_error(
    cluster: OwnCluster, on_cluster: Engine
) -> None:
    run_id = start_flow(on_cluster, Greeting, {"name": "ida"})
    pool, waiting = in_thread(lambda: wait_for_run(on_cluster, run_id, timeout=4))
    with pool:
        observer = fresh_engine(cluster.url)
        try:
            wait_until(lambda: waiter_is_waiting(observer), what="the waiter to wait")
        finally:
            observer.dispose()
        cluster.stop("fast")
        try:
            with pytest.raises(DatabaseUnavailableError) as raised:
                waiting.result(TIMEOUT)
        finally:
            cluster.start()
    message = str(raised.value)
    assert f"while waiting for run {run_id}" in message
    assert "could not reconnect within the timeout (4 s)" in message
