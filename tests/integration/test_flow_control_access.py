"""Flow control with least-privilege roles (`pgflow db grant`): a client role starts runs with a
priority on flows with a concurrency limit, a rate limit and step limits, and a worker role runs
them; the queue triggers, bookings and read counts work with their rights (docs/flow-control.md)."""

from __future__ import annotations

import functools
from typing import Any

import anyio.to_thread
import pytest
from sqlalchemy.engine import Engine

from pgflow import Concurrency, Flow, Job, RateLimit, start_flow, step, wait_for_run
from tests.helpers.database import register_flows, run_sql
from tests.helpers.workers import running_worker
from tests.integration.test_worker_access import Roles, pgflow_grant, roles

__all__ = ["roles"]

pytestmark = pytest.mark.anyio


class Limited(
    Job,
    slug="access_limited",
    concurrency=Concurrency(1, key="tenant"),
    rate_limit=RateLimit(10, per=1, key="tenant"),
    priority=1,
):
    def perform(self, input: dict[str, Any], ctx: Any) -> int:
        return int(input["n"]) * 2


class Stepped(Flow, slug="access_stepped"):
    @step(concurrency=Concurrency(1), rate_limit=RateLimit.named("access_api", 10, per=1))
    def call(self, input: dict[str, Any]) -> int:
        return int(input["n"]) + 1


async def test_a_client_and_a_worker_role_use_every_limit(
    roles: Roles, pgflow_engine: Engine
) -> None:
    register_flows(pgflow_engine, Limited, Stepped)
    done = pgflow_grant(roles.database, "--worker", roles.worker, "--client", roles.client)
    assert done.returncode == 0, done.stderr
    run_sql(roles.database, f'ALTER ROLE "{roles.client}" LOGIN')
    worker_engine = roles.engine(roles.worker_login)
    client = roles.engine(roles.client)
    try:
        runs = [start_flow(client, Limited, {"tenant": "a", "n": n}, priority=n) for n in range(3)]
        runs += [start_flow(client, Stepped, {"n": n}) for n in range(2)]
        async with running_worker(worker_engine, Limited, Stepped):
            outputs = [
                (
                    await anyio.to_thread.run_sync(
                        functools.partial(wait_for_run, client, run_id, timeout=60)
                    )
                ).output
                for run_id in runs
            ]
        assert outputs == [{"perform": 0}, {"perform": 2}, {"perform": 4}, {"call": 1}, {"call": 2}]
    finally:
        worker_engine.dispose()
        client.dispose()
