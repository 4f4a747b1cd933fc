"""``python -m bench.dashboard``: fill a database with many runs, then time the dashboard's pages.

The history is written with set-based INSERTs in the state upstream's functions leave behind
(runs, step states and tasks, completed or failed, satisfying every constraint); the runs still
in flight are started with upstream's own ``pgflow.start_flow``. Then each page is requested
through the real ASGI app served by uvicorn, and the median and p95 response times printed.

    python -m bench.dashboard --runs 1000000            # a throwaway database, dropped after
    python -m bench.dashboard --database-url URL --runs 1000000 --keep   # fill URL, keep it
    python -m bench.dashboard --database-url URL --no-fill               # time an existing one
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import sqlalchemy as sa
import uvicorn
from sqlalchemy.engine import URL, Engine

from pgflow import Context, Flow, Job, map_step, step
from pgflow._db import create_engine, normalize_url
from pgflow.compiler import compile_flow
from pgflow.dashboard import create_app
from pgflow.dsl import definition_of
from pgflow.schema import install
from pgflow.testing import temporary_database


class Email(Job, slug="dash_email"):
    def perform(self, input: Any, ctx: Context) -> Any: ...


class Etl(Flow, slug="dash_etl", max_attempts=3):
    @step
    def extract(self, input: Any, ctx: Context) -> Any: ...

    @step(depends_on=[extract])
    def transform(self, deps: Any, ctx: Context) -> Any: ...

    @step(depends_on=[transform])
    def load(self, deps: Any, ctx: Context) -> Any: ...


class Thumbs(Flow, slug="dash_thumbs"):
    @map_step
    def resize(self, item: Any, ctx: Context) -> Any: ...

    @step(depends_on=[resize])
    def publish(self, deps: Any, ctx: Context) -> Any: ...


FLOWS: list[type[Flow]] = [Email, Etl, Thumbs]
MAP_WIDTH = 3  # elements in each dash_thumbs input
WORKERS = 4

# One chunk of history: runs g in [first, last] of total. Half are jobs, 30 % three-step flows,
# 20 % map flows; 2 % fail in their last step; start times evenly spread over :days up to now;
# durations 0.05-5 s. Rows are built once in a temporary table, then written to upstream's
# tables in dependency order.
FILL_CHUNK = """
CREATE TEMPORARY TABLE fill ON COMMIT DROP AS
SELECT
    gen_random_uuid() AS run_id,
    g,
    CASE WHEN g % 10 < 5 THEN 'dash_email' WHEN g % 10 < 8 THEN 'dash_etl' ELSE 'dash_thumbs' END
        AS flow_slug,
    CASE WHEN (g * 7919) % 100 < 2 THEN 'failed' ELSE 'completed' END AS status,
    CAST(:now AS timestamptz)
        - make_interval(secs => (CAST(:total AS bigint) - g) * (:days * 86400.0 / :total))
        - interval '10 seconds' AS started_at,
    make_interval(secs => 0.05 + ((g * 104729) % 4950) / 1000.0) AS duration
FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS g;

INSERT INTO pgflow.runs
    (run_id, flow_slug, status, input, output, remaining_steps, started_at, completed_at, failed_at)
SELECT
    f.run_id,
    f.flow_slug,
    f.status,
    CASE WHEN f.flow_slug = 'dash_thumbs'
        THEN jsonb_build_array('a.png', 'b.png', 'c.png') ELSE jsonb_build_object('n', f.g) END,
    CASE WHEN f.status = 'completed' THEN jsonb_build_object('done', f.g) END,
    CASE WHEN f.status = 'completed' THEN 0 ELSE 1 END,
    f.started_at,
    CASE WHEN f.status = 'completed' THEN f.started_at + f.duration END,
    CASE WHEN f.status = 'failed' THEN f.started_at + f.duration END
FROM fill AS f;

CREATE TEMPORARY TABLE fill_steps ON COMMIT DROP AS
SELECT
    f.run_id,
    f.g,
    f.flow_slug,
    s.step_slug,
    s.step_type,
    CASE WHEN f.status = 'failed' AND s.step_index = n.steps - 1 THEN 'failed' ELSE 'completed' END
        AS status,
    CASE WHEN s.step_type = 'map' THEN :map_width ELSE 1 END AS tasks,
    f.started_at AS run_started_at,
    f.started_at + f.duration * s.step_index / n.steps AS step_started_at,
    f.started_at + f.duration * (s.step_index + 1) / n.steps AS step_ended_at
FROM fill AS f
JOIN pgflow.steps AS s ON s.flow_slug = f.flow_slug
JOIN (SELECT flow_slug, count(*) AS steps FROM pgflow.steps GROUP BY flow_slug) AS n
    ON n.flow_slug = f.flow_slug;

INSERT INTO pgflow.step_states
    (flow_slug, run_id, step_slug, status, remaining_tasks, remaining_deps, initial_tasks,
     created_at, started_at, completed_at, failed_at, error_message)
SELECT
    fs.flow_slug, fs.run_id, fs.step_slug, fs.status,
    CASE WHEN fs.status = 'completed' THEN 0 ELSE fs.tasks END,
    0, fs.tasks, fs.run_started_at, fs.step_started_at,
    CASE WHEN fs.status = 'completed' THEN fs.step_ended_at END,
    CASE WHEN fs.status = 'failed' THEN fs.step_ended_at END,
    CASE WHEN fs.status = 'failed' THEN 'RuntimeError: upstream service unavailable' END
FROM fill_steps AS fs;

INSERT INTO pgflow.step_tasks
    (flow_slug, run_id, step_slug, task_index, status, attempts_count, error_message, output,
     queued_at, started_at, completed_at, failed_at, last_worker_id)
SELECT
    fs.flow_slug, fs.run_id, fs.step_slug, i, fs.status,
    CASE WHEN fs.status = 'failed' THEN 3 ELSE 1 END,
    CASE WHEN fs.status = 'failed' THEN 'RuntimeError: upstream service unavailable' END,
    CASE WHEN fs.status = 'completed' THEN jsonb_build_object('step', fs.step_slug, 'i', i) END,
    fs.step_started_at,
    fs.step_started_at + (fs.step_ended_at - fs.step_started_at) / 10,
    CASE WHEN fs.status = 'completed' THEN fs.step_ended_at END,
    CASE WHEN fs.status = 'failed' THEN fs.step_ended_at END,
    CASE WHEN fs.step_ended_at > CAST(:now AS timestamptz) - interval '1 hour'
        THEN (CAST(:workers AS uuid[]))[1 + fs.g % :worker_count] END
FROM fill_steps AS fs
CROSS JOIN LATERAL generate_series(0, fs.tasks - 1) AS i;
"""

START_IN_FLIGHT = """
SELECT count(*)
FROM generate_series(1, CAST(:count AS integer)) AS g
CROSS JOIN LATERAL pgflow.start_flow(
    CASE WHEN g % 2 = 0 THEN 'dash_etl' ELSE 'dash_thumbs' END,
    CASE WHEN g % 2 = 0 THEN jsonb_build_object('n', g)
        ELSE jsonb_build_array('a.png', 'b.png', 'c.png') END
) AS started
"""

ADD_WORKERS = """
INSERT INTO pgflow.workers (worker_id, queue_name, function_name, started_at, last_heartbeat_at)
SELECT w, CASE WHEN n % 2 = 0 THEN 'dash_etl' ELSE 'dash_email' END, 'bench.dashboard',
       now() - interval '2 hours', now()
FROM unnest(CAST(:workers AS uuid[])) WITH ORDINALITY AS t(w, n)
"""

PAGES = {
    "overview": "/",
    "runs (newest)": "/runs",
    "runs, flow filter": "/runs?flow=dash_etl",
    "runs, status failed": "/runs?status=failed",
    "runs, flow + failed": "/runs?flow=dash_thumbs&status=failed",
    "runs, time window": "/runs?since={day_ago}&until={hour_ago}",
    "runs, id prefix": "/runs?q={prefix}",
    "runs, page 2": None,  # the "older runs" link of the first page
    "flows": "/flows",
    "flow page": "/flows/dash_etl",
    "run detail": "/runs/{run_id}",
    "workers": "/workers",
}


@contextmanager
def serving(engine: Engine) -> Iterator[str]:
    """The dashboard on ``engine``, served by uvicorn on a free loopback port in a thread."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    config = uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the dashboard did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def fill(engine: Engine, *, runs: int, days: float, chunk: int, in_flight: int) -> float:
    workers = [uuid.uuid4() for _ in range(WORKERS)]
    began = time.perf_counter()
    with engine.begin() as connection:
        for flow in FLOWS:
            for statement in compile_flow(definition_of(flow)):
                connection.execute(sa.text(statement))
        connection.execute(sa.text(ADD_WORKERS), {"workers": workers})
        now = connection.execute(sa.select(sa.func.now())).scalar_one()
    history = runs - in_flight
    for first in range(1, history + 1, chunk):
        last = min(first + chunk - 1, history)
        with engine.begin() as connection:
            connection.exec_driver_sql("SET LOCAL synchronous_commit = off")
            for statement in FILL_CHUNK.split(";\n\n"):
                connection.execute(
                    sa.text(statement),
                    {
                        "first": first,
                        "last": last,
                        "total": history,
                        "days": days,
                        "now": now,
                        "map_width": MAP_WIDTH,
                        "workers": workers,
                        "worker_count": WORKERS,
                    },
                )
        print(f"  {last:>9,} runs written ({time.perf_counter() - began:6.1f} s)", flush=True)
    with engine.begin() as connection:
        connection.execute(sa.text(START_IN_FLIGHT), {"count": in_flight})
    # The server here runs without autovacuum: give the planner the statistics it would have.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        for table in ("runs", "step_states", "step_tasks", "workers"):
            connection.exec_driver_sql(f"VACUUM ANALYZE pgflow.{table}")
    return time.perf_counter() - began


def _sample(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        row = (
            connection.execute(
                sa.text(
                    "SELECT run_id, now() - interval '1 day' AS day_ago,"
                    " now() - interval '1 hour' AS hour_ago"
                    " FROM pgflow.runs WHERE flow_slug = 'dash_thumbs' AND status = 'failed'"
                    " ORDER BY started_at DESC LIMIT 1"
                )
            )
            .mappings()
            .one()
        )
    return {
        "run_id": str(row["run_id"]),
        "prefix": str(row["run_id"])[:5],
        "day_ago": row["day_ago"].strftime("%Y-%m-%dT%H:%M:%S"),
        "hour_ago": row["hour_ago"].strftime("%Y-%m-%dT%H:%M:%S"),
    }


def measure(engine: Engine, *, repetitions: int) -> dict[str, dict[str, float]]:
    sample = _sample(engine)
    results: dict[str, dict[str, float]] = {}
    with serving(engine) as base_url, httpx.Client(base_url=base_url, timeout=60) as http:
        first_page = http.get("/runs").text
        marker = 'class="next" href="?'
        start = first_page.index(marker) + len(marker)
        page_two = "/runs?" + first_page[start : first_page.index('"', start)].replace("&amp;", "&")
        for name, template in PAGES.items():
            path = page_two if template is None else template.format(**sample)
            http.get(path).raise_for_status()  # warm: plans, connection pool
            timings = []
            for _ in range(repetitions):
                began = time.perf_counter()
                response = http.get(path)
                timings.append((time.perf_counter() - began) * 1000)
                response.raise_for_status()
            timings.sort()
            results[name] = {
                "median_ms": round(statistics.median(timings), 1),
                "p95_ms": round(timings[max(0, round(0.95 * len(timings)) - 1)], 1),
                "max_ms": round(timings[-1], 1),
            }
    return results


def counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        return {
            table: connection.execute(sa.text(f"SELECT count(*) FROM pgflow.{table}")).scalar_one()
            for table in ("runs", "step_states", "step_tasks")
        }


@contextmanager
def _database(url: str | None, keep: bool) -> Iterator[URL]:
    if url is not None:
        yield normalize_url(url)
        return
    if keep:
        raise SystemExit("--keep needs --database-url (a throwaway database is always dropped)")
    with temporary_database() as throwaway:
        yield throwaway


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.dashboard", description=__doc__)
    parser.add_argument("--database-url", help="fill (and keep) this database instead")
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=30.0, help="history spread over this")
    parser.add_argument("--in-flight", type=int, default=500, help="runs left started")
    parser.add_argument("--chunk", type=int, default=100_000, help="runs per transaction")
    parser.add_argument("--repetitions", type=int, default=20)
    parser.add_argument("--no-fill", action="store_true", help="only time the pages")
    parser.add_argument("--keep", action="store_true", help="keep --database-url's data")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    with _database(args.database_url, args.keep) as url:
        engine = create_engine(url)
        report: dict[str, Any] = {}
        install(url)  # idempotent: brings a kept database up to this version's schema
        if not args.no_fill:
            print(f"filling {args.runs:,} runs over {args.days:g} days …", flush=True)
            report["fill_seconds"] = round(
                fill(
                    engine,
                    runs=args.runs,
                    days=args.days,
                    chunk=args.chunk,
                    in_flight=args.in_flight,
                ),
                1,
            )
            print(f"filled in {report['fill_seconds']} s", flush=True)
        report["rows"] = counts(engine)
        report["pages"] = measure(engine, repetitions=args.repetitions)
        engine.dispose()
    print(f"\nrows: {report['rows']}")
    print(f"\n{'page':<24}{'median ms':>11}{'p95 ms':>9}{'max ms':>9}")
    for name, figures in report["pages"].items():
        print(f"{name:<24}{figures['median_ms']:>11}{figures['p95_ms']:>9}{figures['max_ms']:>9}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as output:
            json.dump(report, output, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
