"""Pruning under load: ``python -m bench.prune [--tasks 1000000] [--backlog 400000]``.

Fills a throwaway database with finished runs holding ``--tasks`` tasks (runs of a flow with a
9-element map and a fan-in step: 10 tasks, 2 step states and 10 archived pgmq messages per run,
finished 40 days ago), queues ``--backlog`` no-op jobs, and starts the benchmark worker (one
process, concurrency 100, batch 50, as ``make bench`` runs it). Then it measures the worker's
throughput in a window without pruning, runs ``prune(older_than=30 days)`` while the worker
drains the queue, measures the worker's throughput during the prune, and once more without.

The finished runs are written with bulk INSERTs of exactly the rows upstream's functions leave
behind for a completed run (the same columns and values; driving a million tasks through
``complete_task`` would take most of an hour here and measure something else). Prints a report;
``--json`` writes it to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa

from bench import flows
from bench._process import WorkerProcess
from bench.systems.pgflow_system import COMPLETED_RUNS, MODULE, PgflowAdapter, start_runs
from pgflow import Flow, map_step, step
from pgflow._db import create_engine
from pgflow.compiler import compile_flow
from pgflow.dsl import definition_of
from pgflow.operations import prune
from pgflow.testing import temporary_database

ELEMENTS = 9
TASKS_PER_RUN = ELEMENTS + 1
RESULTS_DIR = Path(__file__).resolve().parent / "results"
BACKLOG_CHUNK = 10_000


def progress(message: str) -> None:
    print(f"{datetime.now(UTC):%H:%M:%S} {message}", file=sys.stderr, flush=True)


class Archived(Flow, slug="bench_archived"):
    """The shape of the finished runs that get pruned."""

    @map_step
    async def item(self, item: int) -> int:
        return item * item

    @step(depends_on=[item])
    async def total(self, deps: dict[str, list[int]]) -> int:
        return sum(deps["item"])


# One statement per table, each run finished 40 days ago plus a few milliseconds per run.
FILL = [
    """
    CREATE TEMPORARY TABLE generated AS
    SELECT n, gen_random_uuid() AS run_id,
           now() - interval '40 days' + n * interval '5 milliseconds' AS at
    FROM generate_series(1, %(runs)s) AS n
    """,
    """
    INSERT INTO pgflow.runs (run_id, flow_slug, status, input, output, remaining_steps,
                             started_at, completed_at)
    SELECT run_id, 'bench_archived', 'completed', to_jsonb(ARRAY(SELECT generate_series(1, 9))),
           '{"total": 285}'::jsonb, 0, at, at + interval '2 seconds'
    FROM generated
    """,
    """
    INSERT INTO pgflow.step_states (flow_slug, run_id, step_slug, status, remaining_tasks,
                                    remaining_deps, created_at, started_at, completed_at,
                                    initial_tasks)
    SELECT 'bench_archived', g.run_id, s.step_slug, 'completed', 0, 0, g.at,
           g.at + s.offset_ms * interval '1 millisecond',
           g.at + (s.offset_ms + 900) * interval '1 millisecond', s.tasks
    FROM generated AS g
    CROSS JOIN (VALUES ('item', 0, 9), ('total', 1000, 1)) AS s(step_slug, offset_ms, tasks)
    """,
    """
    INSERT INTO pgflow.step_tasks (flow_slug, run_id, step_slug, message_id, task_index, status,
                                   attempts_count, output, queued_at, started_at, completed_at)
    SELECT 'bench_archived', g.run_id, t.step_slug, (g.n - 1) * 10 + t.ordinal, t.task_index,
           'completed', 1, t.output, g.at + t.offset_ms * interval '1 millisecond',
           g.at + (t.offset_ms + 10) * interval '1 millisecond',
           g.at + (t.offset_ms + 20) * interval '1 millisecond'
    FROM generated AS g
    CROSS JOIN (
        SELECT 'item' AS step_slug, i - 1 AS task_index, i AS ordinal, to_jsonb(i * i) AS output,
               0 AS offset_ms
        FROM generate_series(1, 9) AS i
        UNION ALL
        SELECT 'total', 0, 10, '285'::jsonb, 1000
    ) AS t
    """,
    """
    INSERT INTO pgmq.a_bench_archived (msg_id, read_ct, enqueued_at, archived_at, vt, message)
    SELECT t.message_id, 1, t.queued_at, t.completed_at, t.started_at + interval '62 seconds',
           jsonb_build_object('flow_slug', t.flow_slug, 'run_id', t.run_id,
                              'step_slug', t.step_slug, 'task_index', t.task_index)
    FROM pgflow.step_tasks AS t
    WHERE t.flow_slug = 'bench_archived'
    """,
]

NOOP_COMPLETED = COMPLETED_RUNS


def completed_noops(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute(NOOP_COMPLETED, [definition_of(flows.Noop).slug]).fetchone()
        return int(row[0]) if row else 0


def throughput(url: str, seconds: float) -> float:
    """Jobs completed per second over a window of ``seconds``."""
    before, started = completed_noops(url), time.perf_counter()
    time.sleep(seconds)
    return (completed_noops(url) - before) / (time.perf_counter() - started)


def prepare(url: str, tasks: int, backlog: int) -> dict[str, Any]:
    PgflowAdapter().install(url)
    engine = create_engine(url)
    with engine.begin() as connection:
        for statement in compile_flow(definition_of(Archived)):
            connection.execute(sa.text(statement))
    engine.dispose()
    runs = tasks // TASKS_PER_RUN
    began = time.perf_counter()
    with psycopg.connect(url) as connection:
        for statement in FILL:
            connection.execute(statement, {"runs": runs})
    with psycopg.connect(url, autocommit=True) as connection:
        # What autovacuum would have done by the time these runs are 40 days old.
        connection.execute(
            "VACUUM ANALYZE pgflow.runs, pgflow.step_states, pgflow.step_tasks,"
            " pgmq.a_bench_archived"
        )
    filled = time.perf_counter() - began
    progress(f"filled {runs * TASKS_PER_RUN} finished tasks in {filled:.0f} s")
    # In chunks, with fresh statistics after the first: plans cached while the queue table was
    # empty make one huge bulk start quadratic (DESIGN.md, section 5).
    queued = 0
    while queued < backlog:
        chunk = min(BACKLOG_CHUNK, backlog - queued)
        start_runs(url, definition_of(flows.Noop).slug, chunk)
        queued += chunk
        if queued == chunk:
            with psycopg.connect(url, autocommit=True) as connection:
                connection.execute(
                    "ANALYZE pgflow.runs, pgflow.step_states, pgflow.step_tasks, pgmq.q_bench_noop"
                )
        progress(f"queued {queued} of {backlog} jobs")
    return {"runs": runs, "tasks": runs * TASKS_PER_RUN, "fill_seconds": round(filled, 1)}


def measure(url: str, window: float) -> dict[str, Any]:
    engine = create_engine(url)
    with WorkerProcess(MODULE, "worker", url):
        time.sleep(3.0)  # warm-up: connections, first claims
        before = throughput(url, window)
        progress(f"worker alone: {before:.0f} jobs/s; pruning")
        done_before = completed_noops(url)
        cpu_began = time.process_time()
        report = prune(engine, older_than=timedelta(days=30))
        prune_cpu = time.process_time() - cpu_began
        during = (completed_noops(url) - done_before) / report.seconds
        progress(f"pruned in {report.seconds:.1f} s; worker meanwhile: {during:.0f} jobs/s")
        after = throughput(url, window)
        left = backlog_left(url)
    engine.dispose()
    baseline = (before + after) / 2
    return {
        "prune": report.as_dict(),
        "prune_client_cpu_seconds": round(prune_cpu, 2),
        "worker_jobs_per_s_before": round(before),
        "worker_jobs_per_s_during_prune": round(during),
        "worker_jobs_per_s_after": round(after),
        "ratio_during_vs_without": round(during / baseline, 3) if baseline else None,
        "backlog_left_at_end": left,
    }


def backlog_left(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT count(*) FROM pgflow.runs WHERE flow_slug = %s AND status = 'started'",
            [definition_of(flows.Noop).slug],
        ).fetchone()
        return int(row[0]) if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.prune", description=__doc__)
    parser.add_argument("--tasks", type=int, default=1_000_000, help="finished tasks to prune")
    parser.add_argument("--backlog", type=int, default=400_000, help="queued no-op jobs")
    parser.add_argument("--window", type=float, default=20.0, help="seconds per baseline")
    parser.add_argument("--json", action="store_true", help="also write bench/results/*.json")
    args = parser.parse_args()
    with temporary_database() as database:
        url = database.set(drivername="postgresql").render_as_string(hide_password=False)
        result = {"when": datetime.now(UTC).isoformat(timespec="seconds"), **vars(args)}
        result["filled"] = prepare(url, args.tasks, args.backlog)
        result.update(measure(url, args.window))
    if result["backlog_left_at_end"] == 0:
        result["warning"] = "the backlog ran dry: raise --backlog, the figures are too low"
    print(json.dumps(result, indent=2))
    if args.json:
        RESULTS_DIR.mkdir(exist_ok=True)
        path = RESULTS_DIR / f"prune-{result['when'].replace(':', '')}.json"
        path.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
