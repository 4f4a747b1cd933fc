"""``python -m bench.flow_control``: P8 fairness and P9 cost of flow control (docs/flow-control.md),
each a ratio of two runs made here, one after the other, on this machine.

P8: tenant B's median wait (a task's start minus its enqueue) with tenant A's backlog of
``--backlog`` tasks queued first, over the same without the backlog; a job limited to 2 at once
per tenant. Goal: <= 2.
P9: P1 (drain ``--jobs`` no-op jobs queued beforehand, one worker) on a job whose per-key limit
never binds, over P1 on the same job without a limit. Goal: >= 0.8. The same for a job with a
default priority (every message through the priority trigger) and for a rate limit that never
binds (every send booked, every read counted), for what they cost.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

import anyio
import anyio.to_thread
import sqlalchemy as sa

from bench._process import analyze_filled_tables
from pgflow import Concurrency, Job, RateLimit
from pgflow._db import create_engine
from pgflow.compiler import compile_flow
from pgflow.dsl import definition_of
from pgflow.testing import temporary_database
from pgflow.worker import Worker, WorkerOptions

STARTS = (
    "SELECT count(*) FROM generate_series(1, :runs) AS n,"
    " LATERAL pgflow.start_flow(:slug, jsonb_build_object('n', n, 'tenant', {tenant}))"
)


class Fair(Job, slug="bench_fair", concurrency=Concurrency(2, key="tenant")):
    async def perform(self, input: dict[str, Any], ctx: Any) -> None:
        await anyio.sleep(0.02)


class Unlimited(Job, slug="bench_unlimited"):
    async def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class NeverBinds(Job, slug="bench_never_binds", concurrency=Concurrency(1_000_000, key="tenant")):
    async def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class Prioritized(Job, slug="bench_prioritized", priority=1):
    async def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class RateNeverBinds(
    Job, slug="bench_rate_never_binds", rate_limit=RateLimit(1_000_000, per=1, key="tenant")
):
    async def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


def prepare(engine: sa.Engine, *flows: type[Job]) -> None:
    with engine.begin() as connection:
        for flow in flows:
            for statement in compile_flow(definition_of(flow)):
                connection.execute(sa.text(statement))


def start(engine: sa.Engine, slug: str, runs: int, tenant: str) -> None:
    left = runs
    while left > 0:
        with engine.begin() as connection:
            connection.execute(
                sa.text(STARTS.format(tenant=tenant)), {"runs": min(left, 5_000), "slug": slug}
            )
        left -= 5_000


def completed(engine: sa.Engine, slug: str) -> int:
    with engine.begin() as connection:
        return int(
            connection.execute(
                sa.text(
                    "SELECT count(*) FROM pgflow.runs WHERE flow_slug = :s AND status = 'completed'"
                ),
                {"s": slug},
            ).scalar_one()
        )


async def serve_until(
    engine: sa.Engine, flow: type[Job], done: Any, concurrency: int, then: Any = None
) -> float:
    """Serve ``flow`` with one in-process worker until ``done()``; seconds from start to done.
    ``then``: called (in a thread) once the worker had a second to start, before timing."""
    options = WorkerOptions(concurrency=concurrency, batch_size=50, poll_interval=0.05)
    worker = Worker([flow], engine, options=options)
    async with anyio.create_task_group() as group:
        group.start_soon(worker.serve)
        if then is not None:
            await anyio.sleep(1)
            await anyio.to_thread.run_sync(then)
        started = time.perf_counter()
        while not await anyio.to_thread.run_sync(done):
            await anyio.sleep(0.05)
        elapsed = time.perf_counter() - started
        worker.stop()
    return elapsed


def b_waits(engine: sa.Engine) -> list[float]:
    with engine.begin() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT extract(epoch FROM t.started_at - t.queued_at) FROM pgflow.step_tasks AS t"
                " JOIN pgflow.runs AS r USING (run_id)"
                " WHERE r.flow_slug = 'bench_fair' AND r.input ->> 'tenant' = 'b'"
            )
        )
        return [float(w) for w in rows.scalars() if w is not None]


def fairness(backlog: int, b_tasks: int) -> float:
    """B's p50 wait in seconds, with ``backlog`` of A's tasks queued first (0: none)."""
    with temporary_database(install_schema=True) as url:
        engine = create_engine(url)
        prepare(engine, Fair)
        if backlog:
            start(engine, "bench_fair", backlog, "'a'")
        start(engine, "bench_fair", b_tasks, "'b'")
        analyze_filled_tables(
            url.set(drivername="postgresql").render_as_string(hide_password=False)
        )

        def b_done() -> bool:
            return len(b_waits(engine)) >= b_tasks

        anyio.run(serve_until, engine, Fair, b_done, 10)
        waits = b_waits(engine)
        engine.dispose()
    return statistics.median(waits)


def drain_rate(flow: type[Job], jobs: int) -> float:
    """P1-style: jobs/s draining ``jobs`` queued no-op jobs with one in-process worker."""
    slug = definition_of(flow).slug
    with temporary_database(install_schema=True) as url:
        engine = create_engine(url)
        prepare(engine, flow)
        start(engine, slug, jobs, "(n % 100)::text")
        analyze_filled_tables(
            url.set(drivername="postgresql").render_as_string(hide_password=False)
        )
        seconds = anyio.run(serve_until, engine, flow, lambda: completed(engine, slug) >= jobs, 100)
        engine.dispose()
    return jobs / seconds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flow_control")
    parser.add_argument("--backlog", type=int, default=10_000, help="P8: A's tasks queued first")
    parser.add_argument("--b-tasks", type=int, default=20, help="P8: B's tasks")
    parser.add_argument("--jobs", type=int, default=3_000, help="P9: jobs drained")
    parser.add_argument("--repetitions", type=int, default=2)
    parser.add_argument("--skip-p8", action="store_true", help="Only the drain rates (P9)")
    args = parser.parse_args(argv)
    if not args.skip_p8:
        alone = min(fairness(0, args.b_tasks) for _ in range(args.repetitions))
        behind = min(fairness(args.backlog, args.b_tasks) for _ in range(args.repetitions))
        print(
            f"P8: B's p50 wait {alone * 1000:.0f} ms alone, {behind * 1000:.0f} ms behind A's "
            f"{args.backlog:,} tasks: ratio {behind / alone:.2f} (goal <= 2)"
        )
    # Interleaved (each repetition drains every variant once), so the load others put on the
    # machine meanwhile weighs on every variant alike; the best of the repetitions counts.
    variants = (Unlimited, NeverBinds, Prioritized, RateNeverBinds)
    measured: dict[type[Job], list[float]] = {flow: [] for flow in variants}
    for _ in range(args.repetitions):
        for flow in variants:
            measured[flow].append(drain_rate(flow, args.jobs))
    rates = {flow: max(values) for flow, values in measured.items()}
    plain = rates[Unlimited]
    print(
        f"P9: P1 {plain:.0f} jobs/s without a limit, {rates[NeverBinds]:.0f} jobs/s with one "
        f"that never binds: ratio {rates[NeverBinds] / plain:.2f} (goal >= 0.8)"
    )
    for flow, what in ((Prioritized, "a default priority"), (RateNeverBinds, "a rate limit")):
        print(f"    {rates[flow]:.0f} jobs/s with {what}: ratio {rates[flow] / plain:.2f}")


if __name__ == "__main__":
    main()
