"""Everything through PgBouncer in transaction mode (docs/deployment.md, "Scaling out").

A real PgBouncer (Debian's) in front of the test server, with fewer server connections than its
clients open; the database URL says ``pool_mode=transaction``, as a user's would. Without that
(psycopg prepares statements after five uses) the workers' claims fail with
``DuplicatePreparedStatement`` and no run completes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from sqlalchemy.orm import Session

from pgflow import _db, start_flow
from pgflow.dashboard import create_app
from pgflow.dsl import definition_of
from pgflow.operations import cancel_run, describe_run, list_runs, list_workers, retry_run
from pgflow.schedules import Cron, create_schedule
from tests.acceptance.test_schedule_processes import check_one_run_per_tick, fires
from tests.helpers import database
from tests.helpers.dashboard import http_client
from tests.helpers.database import register_flows
from tests.helpers.pgbouncer import PgBouncer, pgbouncer
from tests.helpers.process_flows import SlowStep, TenSteps
from tests.helpers.schedule_flows import Tick
from tests.helpers.waiting import wait_until
from tests.helpers.worker_processes import worker_processes

ROOT = Path(__file__).resolve().parents[2]
POOL_SIZE = 8
WORKER_COMMAND = [sys.executable, "-m", "pgflow", "run-worker"]
WORKER_COMMAND += ["tests.helpers.process_flows", "tests.helpers.schedule_flows"]
WORKER_COMMAND += ["--log-format", "json"]
WorkerFactory = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def bouncer(pgflow_server: Any) -> Iterator[PgBouncer]:
    with pgbouncer(pgflow_server.url, pool_size=POOL_SIZE) as started:
        yield started


@pytest.fixture
def pooled_url(bouncer: PgBouncer, pgflow_database: URL) -> URL:
    return bouncer.url(str(pgflow_database.database))


@pytest.fixture
def pooled_libpq_url(bouncer: PgBouncer, pgflow_database: URL) -> str:
    return bouncer.libpq_url(str(pgflow_database.database))


@pytest.fixture
def pooled_engine(pooled_url: URL) -> Iterator[Engine]:
    # A pool that keeps its connections: each is used far more than psycopg's five uses
    # before it would prepare, so a prepared statement would show.
    engine = _db.create_engine(pooled_url)
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture
def spawn_worker(pooled_libpq_url: str, tmp_path: Path) -> Iterator[WorkerFactory]:
    """Workers whose DATABASE_URL goes through PgBouncer."""
    env = {"DATABASE_URL": pooled_libpq_url, "PGFLOW_LISTEN_URL": ""}  # "": not set
    with worker_processes(WORKER_COMMAND, tmp_path, env) as spawn:
        yield spawn


def events(log: Path, name: str) -> list[dict[str, Any]]:
    found = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == name:
            found.append(record)
    return found


def scalar(engine: Engine, statement: str, **params: Any) -> Any:
    with engine.begin() as connection:
        return connection.execute(sa.text(statement), params).scalar_one()


def server_connections(server: URL, database_name: str) -> int:
    """Backends on the database right now (the pooler's server connections among them)."""
    count: int = database.scalar(
        server,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = :name",
        name=database_name,
    )
    return count


@pytest.mark.slow
def test_three_workers_through_pgbouncer_run_maps_schedules_and_run_control(
    pgflow_database: URL,
    pooled_engine: Engine,
    spawn_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    register_flows(pooled_engine, TenSteps, SlowStep, Tick)
    workers = [spawn_worker("--poll-interval", "0.5", "--concurrency", "10") for _ in range(3)]
    logs = sorted(tmp_path.glob("worker-*.log"))
    wait_until(
        lambda: all(events(log, "scheduler.started") for log in logs),
        timeout=60,
        what="three workers serving through PgBouncer",
    )
    run_ids = []
    for n in range(60):
        with Session(pooled_engine) as session:
            run_ids.append(start_flow(session, TenSteps, {"n": n}))
            session.commit()
    create_schedule(pooled_engine, Tick, Cron("* * * * * *", name="every_second", missed="all"))

    slow = start_flow(pooled_engine, SlowStep, {"seconds": 60})
    wait_until(
        lambda: scalar(
            pooled_engine,
            "SELECT count(*) FROM pgflow.step_tasks WHERE run_id = :id AND status = 'started'",
            id=slow,
        ),
        timeout=60,
        what="the slow run's task started",
    )
    assert cancel_run(pooled_engine, slow, "through the pooler").outcome == "cancelled"
    retried = retry_run(pooled_engine, slow)
    assert retried.new_run_id is not None
    cancel_run(pooled_engine, retried.new_run_id)

    def completed() -> bool:
        done: int = scalar(
            pooled_engine,
            "SELECT count(*) FROM pgflow.runs WHERE flow_slug = 'ten_steps'"
            " AND status = 'completed'",
        )
        return done == len(run_ids)

    busiest = server_connections(pgflow_database, str(pgflow_database.database))
    wait_until(completed, timeout=180, what="60 map-flow runs through PgBouncer")
    wait_until(
        lambda: len(fires(pooled_engine, "every_second")) >= 8,
        timeout=60,
        what="8 ticks of the every-second schedule",
    )
    check_one_run_per_tick(pooled_engine, "every_second")

    # Each task ran once: the pooler lost no claim and doubled no completion.
    assert (
        scalar(
            pooled_engine,
            "SELECT count(*) FROM pgflow.step_tasks WHERE flow_slug = 'ten_steps'"
            " AND (attempts_count <> 1 OR status <> 'completed')",
        )
        == 0
    )
    per_run = len(definition_of(TenSteps).steps) - 1 + 3  # the map step has three tasks
    assert scalar(
        pooled_engine, "SELECT count(*) FROM pgflow.step_tasks WHERE flow_slug = 'ten_steps'"
    ) == per_run * len(run_ids)
    # 3 workers hold 15+ client connections; the server saw at most the pool's.
    assert busiest <= POOL_SIZE + 1, busiest  # + the count's own connection
    assert describe_run(pooled_engine, slow) is not None
    assert len(list_runs(pooled_engine, flow="ten_steps", limit=100)) == len(run_ids)
    assert len(list_workers(pooled_engine)) >= 3

    for process in workers:
        assert process.poll() is None, "a worker exited"
    for log in logs:
        text = log.read_text()
        assert "prepared statement" not in text, text[-3000:]
        assert not events(log, "worker.crashed"), text[-3000:]
        # No LISTEN through the pooler: the worker polls, and says so once.
        assert len(events(log, "worker.polling")) == 1, text[-3000:]


def test_worker_behind_pgbouncer_wakes_at_once_with_a_listen_url(
    pgflow_database: URL,
    pooled_engine: Engine,
    spawn_worker: WorkerFactory,
    tmp_path: Path,
) -> None:
    register_flows(pooled_engine, TenSteps, SlowStep, Tick)
    # Polling once a minute: only a wake-up can finish the runs within the deadlines below.
    spawn_worker(
        "--poll-interval",
        "60",
        "--listen-url",
        database.libpq_url(pgflow_database),
    )
    log = next(tmp_path.glob("worker-*.log"))
    wait_until(lambda: events(log, "scheduler.started"), timeout=60, what="the worker started")
    for _ in range(3):
        run_id = start_flow(pooled_engine, SlowStep, {"seconds": 0})
        wait_until(
            lambda run_id=run_id: (
                scalar(  # type: ignore[misc]
                    pooled_engine, "SELECT status FROM pgflow.runs WHERE run_id = :id", id=run_id
                )
                == "completed"
            ),
            timeout=30,
            what="a run woken by NOTIFY on the direct listen URL",
        )
    assert not events(log, "worker.polling"), log.read_text()[-3000:]


def test_dashboard_pages_through_pgbouncer(pooled_engine: Engine, pooled_url: URL) -> None:
    register_flows(pooled_engine, TenSteps)
    run_id = start_flow(pooled_engine, TenSteps, {"n": 1})
    pages = ["/", "/flows", "/flows/ten_steps", "/runs", f"/runs/{run_id}", "/workers"]
    pages += [f"/runs/{run_id}/steps/s1/tasks", f"/runs/{run_id}/value/input"]
    with http_client(create_app(pooled_engine)) as client:
        for _ in range(6):  # past psycopg's five uses of each statement
            for page in pages:
                response = client.get(page)
                assert response.status_code == 200, (page, response.text[-2000:])
        # An action through the pooler: the confirmation page's CSRF token, then the POST.
        action = f"/runs/{run_id}/actions/cancel"
        token = re.search(r'name="csrf_token" value="([^"]+)"', client.get(action).text)
        assert token is not None
        origin = {"origin": str(client.base_url).rstrip("/")}
        cancelled = client.post(action, data={"csrf_token": token[1]}, headers=origin)
        assert cancelled.status_code == 303, cancelled.text[-2000:]
    assert describe_run(pooled_engine, run_id).run.status.value == "failed"  # type: ignore[union-attr]


def test_pgflow_db_commands_through_pgbouncer(
    pgflow_empty_database: URL, bouncer: PgBouncer
) -> None:
    url = bouncer.libpq_url(str(pgflow_empty_database.database))
    env = {**os.environ, "DATABASE_URL": url}

    def pgflow(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "pgflow", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    role = f"pooled_worker_{uuid.uuid4().hex[:8]}"
    database.run_sql(pgflow_empty_database, f"CREATE ROLE {role} NOLOGIN")
    try:
        for args in (
            ["db", "install"],
            ["db", "status", "--check"],
            ["db", "install"],
            ["db", "grant", "--worker", role],
            ["runs", "list"],
            ["db", "uninstall", "--yes"],
        ):
            done = pgflow(*args)
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        assert "pgflow" not in database.schemas(pgflow_empty_database)
    finally:
        database.run_sql(pgflow_empty_database, f"DROP ROLE IF EXISTS {role}")
