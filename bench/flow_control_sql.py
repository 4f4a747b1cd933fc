"""``python -m bench.flow_control_sql``: what flow control's triggers cost in SQL, counted by
PostgreSQL (``track_functions = 'pl'``, ``pg_stat_user_functions``): ``--runs`` single-task runs
of a job with a default priority and of a job with a rate limit that never binds, each driven
with upstream's functions one task at a time (start_flow, pgmq.read, start_tasks,
complete_task), as a TypeScript worker drives them; calls and time per trigger function next
to the time of upstream's functions."""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Sequence
from typing import Any

import psycopg

from pgflow import Job, RateLimit
from pgflow.compiler import compile_flow
from pgflow.dsl import definition_of
from pgflow.testing import temporary_database

OURS = ("order_by_priority", "book_on_send", "book_again", "admit_read", "postpone_refused_reads")
UPSTREAM = ("start_flow", "start_tasks", "complete_task")


class Ranked(Job, slug="sql_ranked", priority=1):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class Rated(Job, slug="sql_rated", rate_limit=RateLimit(1_000_000, per=1, key="tenant")):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


def drive(connection: psycopg.Connection[Any], slug: str, runs: int) -> None:
    worker = uuid.uuid4()
    connection.execute(
        "INSERT INTO pgflow.workers (worker_id, queue_name, function_name) VALUES (%s, %s, 'b')",
        (worker, slug),
    )
    for n in range(runs):
        connection.execute(
            "SELECT pgflow.start_flow(%s, jsonb_build_object('n', %s::int, 'tenant', 't'))",
            (slug, n),
        )
        read = connection.execute("SELECT msg_id FROM pgmq.read(%s, 30, 1)", (slug,)).fetchone()
        assert read is not None, "the message is visible at once"
        msg_id = read[0]
        task = connection.execute(
            "SELECT run_id, step_slug, task_index"
            " FROM pgflow.start_tasks(%s, ARRAY[%s]::bigint[], %s)",
            (slug, msg_id, worker),
        ).fetchone()
        connection.execute("SELECT pgflow.complete_task(%s, %s, %s, 'null'::jsonb)", task)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.flow_control_sql")
    parser.add_argument("--runs", type=int, default=300)
    args = parser.parse_args(argv)
    with temporary_database(install_schema=True) as url:
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute("SET track_functions = 'pl'")
            for flow in (Ranked, Rated):
                for statement in compile_flow(definition_of(flow)):
                    connection.execute(statement)
            connection.execute("SELECT pg_stat_reset()")
            for flow in (Ranked, Rated):
                drive(connection, definition_of(flow).slug, args.runs)
            connection.execute("SELECT pg_stat_force_next_flush()")
            rows = connection.execute(
                "SELECT funcname, calls, total_time FROM pg_stat_user_functions"
                " WHERE funcname = ANY(%s) ORDER BY schemaname, funcname",
                (list(OURS + UPSTREAM),),
            ).fetchall()
    # upstream's plpgsql time per task (start_flow + complete_task; start_tasks is SQL)
    per_task = sum(total for name, _, total in rows if name in UPSTREAM) / (2 * args.runs)
    print(
        f"{args.runs} runs of each job; upstream's start_flow + complete_task: "
        f"{per_task:.3f} ms per task"
    )
    for name, calls, total in rows:
        if name in UPSTREAM:
            continue
        each = total / max(calls, 1)
        print(f"  {name}: {calls} calls, {each:.3f} ms each ({each / per_task:.1%} of that)")


if __name__ == "__main__":
    main()
