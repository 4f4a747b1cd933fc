"""Flow control, as docs/flow-control.md shows: at most two syncs per tenant at once, across
every worker, while one worker could run ten; an urgent digest overtaking a backlog; at most
two calls a second to a shared API.

    python examples/flow_control.py    # DATABASE_URL, else a local or embedded PostgreSQL
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import timedelta
from typing import Any

import anyio
import anyio.to_thread
import sqlalchemy as sa

from pgflow import (
    Concurrency,
    Flow,
    Job,
    RateLimit,
    enqueue,
    map_step,
    start_flow,
    step,
    wait_for_run,
)
from pgflow.compiler import compile_flow
from pgflow.dsl import definition_of
from pgflow.errors import ConcurrencyKeyError
from pgflow.schema import install
from pgflow.testing import temporary_database
from pgflow.worker import Worker, WorkerOptions

RUNNING: Counter[str] = Counter()
PEAK: Counter[str] = Counter()


class TenantSync(Job, slug="tenant_sync", concurrency=Concurrency(2, key="tenant")):
    async def perform(self, input: dict[str, Any], ctx: Any) -> None:
        tenant = input["tenant"]
        RUNNING[tenant] += 1
        PEAK[tenant] = max(PEAK[tenant], RUNNING[tenant])
        await anyio.sleep(0.3)  # the tenant's rate-limited API
        RUNNING[tenant] -= 1


class Digest(Job, slug="digest", concurrency=Concurrency(1)):
    async def perform(self, input: dict[str, Any], ctx: Any) -> None:
        ORDER.append(input["name"])


ORDER: list[str] = []

GEOCODER = RateLimit.named("geocoder", 2, per=timedelta(seconds=1))


class Geocode(Job, slug="geocode", rate_limit=GEOCODER):
    async def perform(self, input: dict[str, Any], ctx: Any) -> None:
        CALLS.append(time.monotonic())


class Reverse(Job, slug="reverse_geocode", rate_limit=GEOCODER):
    async def perform(self, input: dict[str, Any], ctx: Any) -> None:
        CALLS.append(time.monotonic())


CALLS: list[float] = []


class Enrich(Flow, slug="enrich"):
    @step
    def accounts(self, input: dict[str, Any]) -> list[str]:
        return list(input["accounts"])

    @map_step(array=accounts, concurrency=Concurrency(4), rate_limit=GEOCODER)
    def locate(self, account: str) -> str:
        return account


def geocode(engine: sa.Engine) -> None:
    runs = [enqueue(engine, Geocode, {"address": n}) for n in range(4)]
    runs += [enqueue(engine, Reverse, {"point": n}) for n in range(2)]
    enriched = start_flow(engine, Enrich, {"accounts": ["a", "b", "c"]})
    for run_id in runs:
        wait_for_run(engine, run_id, timeout=60)
    # (windows of 0.9 s: a tenth of the period allowed for the workers' start latency)
    busiest = max(sum(1 for t in CALLS if s <= t < s + 0.9) for s in CALLS)
    print(f"geocoder: 6 calls, at most {busiest} per second")
    output = wait_for_run(engine, enriched, timeout=60).output
    print(f"enrich: located {output['locate']} within the same budget")


def backlog(engine: sa.Engine) -> list[Any]:
    runs = [enqueue(engine, Digest, {"name": f"weekly-{n}"}) for n in range(3)]
    runs.append(enqueue(engine, Digest, {"name": "incident"}, priority=10))
    return runs


def sync(engine: sa.Engine, digests: list[Any]) -> None:
    runs = [enqueue(engine, TenantSync, {"tenant": "acme", "page": n}) for n in range(6)]
    runs += [enqueue(engine, TenantSync, {"tenant": "globex", "page": n}) for n in range(2)]
    for run_id in runs:
        wait_for_run(engine, run_id, timeout=60)
    print(f"acme: 6 syncs, at most {PEAK['acme']} at once")
    print(f"globex: 2 syncs, at most {PEAK['globex']} at once")
    try:
        enqueue(engine, TenantSync, {"page": 1})
    except ConcurrencyKeyError as error:
        print(f"{type(error).__name__}: {error}")
    for run_id in digests:
        wait_for_run(engine, run_id, timeout=60)
    print("digests ran in this order:", ", ".join(ORDER))
    geocode(engine)


async def main() -> None:
    with temporary_database() as url:
        install(url)
        engine = sa.create_engine(url)
        with engine.begin() as connection:  # what a migration would apply
            for flow in (TenantSync, Digest, Geocode, Reverse, Enrich):
                for statement in compile_flow(definition_of(flow)):
                    connection.execute(sa.text(statement))
        digests = backlog(engine)  # queued before any worker runs
        options = WorkerOptions(concurrency=10, poll_interval=0.2, shutdown_timeout=2)
        flows = [TenantSync, Digest, Geocode, Reverse, Enrich]
        worker = Worker(flows, engine, options=options)
        async with anyio.create_task_group() as group:
            group.start_soon(worker.serve)
            await anyio.to_thread.run_sync(sync, engine, digests)
            worker.stop()
        engine.dispose()


if __name__ == "__main__":
    anyio.run(main)
