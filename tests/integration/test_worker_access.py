"""Least privilege with real roles: `pgflow db grant`, a worker and a client each running as a
role of their own, the worker's start-up check, and a grant revoked while the worker records.

Roles are cluster-wide, so each test creates uniquely named ones and drops them.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import anyio
import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from pgflow import Flow, get_run, signal, start_flow, step, subflow, wait_for_run, wait_step
from pgflow._db import create_engine
from pgflow.errors import InsufficientPrivilegeError, WorkerAccessError
from pgflow.operations import cancel_run, describe_run, prune, resume_run, retry_run
from pgflow.worker import Worker, WorkerOptions
from pgflow.worker._privileges import WORKER_CONNECTIONS
from tests.helpers.database import libpq_url, register_flows, run_sql
from tests.helpers.waiting import wait_until
from tests.helpers.workers import EventLog, running_worker, tasks_of, wait_until_finished

pytestmark = pytest.mark.anyio

STARTUP_DEADLINE = 60.0
"""A worker that starts instead of refusing would serve forever: fail the test instead."""


class Early(Flow, slug="access_early"):
    """Registered before the grant."""

    @step
    def double(self, input: int) -> int:
        return input * 2


class Late(Flow, slug="access_late"):
    """Registered after the grant: covered through default privileges."""

    @step
    def triple(self, input: int) -> int:
        return input * 3


@dataclass
class Roles:
    worker: str
    """NOLOGIN group role that gets the grant."""
    worker_login: str
    """LOGIN role the worker process connects as, a member of ``worker``."""
    client: str
    readonly: str
    database: URL

    def engine(self, role: str) -> Engine:
        return create_engine(self.database.set(username=role), poolclass=sa.pool.NullPool)


@pytest.fixture
def roles(pgflow_database: URL) -> Iterator[Roles]:
    suffix = uuid.uuid4().hex[:8]
    made = Roles(
        f"pgflow_test_w_{suffix}",
        f"pgflow_test_wl_{suffix}",
        f"pgflow_test_c_{suffix}",
        f"pgflow_test_r_{suffix}",
        pgflow_database,
    )
    run_sql(
        pgflow_database,
        f'CREATE ROLE "{made.worker}" NOLOGIN;'
        f'CREATE ROLE "{made.worker_login}" LOGIN IN ROLE "{made.worker}";'
        f'CREATE ROLE "{made.client}" NOLOGIN;'
        f'CREATE ROLE "{made.readonly}" NOLOGIN;',
    )
    try:
        yield made
    finally:
        for role in (made.worker_login, made.worker, made.client, made.readonly):
            run_sql(pgflow_database, f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


def pgflow_grant(url: URL, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": libpq_url(url)}
    return subprocess.run(
        [sys.executable, "-m", "pgflow", "db", "grant", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def grant_worker(roles: Roles) -> None:
    run_sql(roles.database, f"SELECT pgflow_python.grant_access('{roles.worker}', 'worker')")


async def test_granted_roles_run_flows_added_before_and_after_the_grant(
    roles: Roles, pgflow_engine: Engine
) -> None:
    register_flows(pgflow_engine, Early, Branch, Approval)
    done = pgflow_grant(
        roles.database,
        "--worker",
        roles.worker,
        "--client",
        roles.client,
        "--readonly",
        roles.readonly,
    )
    assert done.returncode == 0, done.stderr
    assert f"worker   {roles.worker}: " in done.stdout
    assert "same on tables and sequences postgres creates later (new flows)" in done.stdout
    # Roles created NOLOGIN (group roles) that are later allowed to log in.
    run_sql(
        roles.database, f'ALTER ROLE "{roles.client}" LOGIN; ALTER ROLE "{roles.readonly}" LOGIN'
    )
    register_flows(pgflow_engine, Late)  # after the grant, as migrations would add it

    worker_engine = roles.engine(roles.worker_login)
    client = roles.engine(roles.client)
    reader = roles.engine(roles.readonly)
    try:
        async with running_worker(worker_engine, Early, Late):
            early = start_flow(client, Early, 5)
            late = start_flow(client, Late, 5)
            # A root condition unmet at the start: skipped by the client's own start_flow.
            branch = start_flow(client, Branch, {"go": False})
            assert get_run(client, branch).status == "completed"  # type: ignore[union-attr]
            # A root wait step (docs/waiting.md) with a deadline, signalled by the client.
            approval = start_flow(client, Approval, 1, deadline=timedelta(hours=1))
            assert str(signal(client, approval, "approve", "ok").outcome) == "completed"
            assert get_run(client, approval).status == "completed"  # type: ignore[union-attr]
            for run_id, output in ((early, {"double": 10}), (late, {"triple": 15})):
                run = await anyio.to_thread.run_sync(
                    functools.partial(wait_for_run, client, run_id, timeout=30)
                )
                assert run.output == output
        assert get_run(reader, early) is not None
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            start_flow(reader, Early, 1)
        refused_to_client = [
            "INSERT INTO pgflow.workers (worker_id, queue_name, function_name)"
            " VALUES (gen_random_uuid(), 'access_early', 'x')",
            "DELETE FROM pgflow.runs",
            "SELECT pgflow.create_flow('not_allowed')",
            "SELECT pgmq.archive('access_early', 1::bigint)",  # recording a task outcome
        ]
        for statement in refused_to_client:
            with client.connect() as connection, pytest.raises(sa.exc.ProgrammingError) as denied:
                connection.execute(sa.text(statement))
            assert isinstance(denied.value.orig, psycopg.errors.InsufficientPrivilege), statement
    finally:
        for engine in (worker_engine, client, reader):
            engine.dispose()


class Approval(Flow, slug="access_approval", run_timeout=3600):
    @wait_step
    def approve(self) -> None: ...


class Branch(Flow, slug="access_branch"):
    @step(if_={"go": True})
    def maybe(self, input: Any) -> str:
        return "ran"


EARLY_SOURCE = """\
from pgflow import Flow, step


class Early(Flow, slug="access_early"):
    @step
    def double(self, input):
        return input * 2
"""


async def refused_start(roles: Roles) -> tuple[str, EventLog]:
    """The WorkerAccessError's message of a worker started as the login role, and its events."""
    worker_engine = roles.engine(roles.worker_login)
    events = EventLog()
    try:
        worker = Worker([Early], worker_engine, options=WorkerOptions(poll_interval=0.2))
        with pytest.raises(WorkerAccessError) as refused, anyio.fail_after(STARTUP_DEADLINE):
            await worker.serve()
    finally:
        events.close()
        worker_engine.dispose()
    return str(refused.value), events


async def test_a_worker_missing_privileges_refuses_to_start_and_lists_them(
    roles: Roles, pgflow_engine: Engine, tmp_path: Path
) -> None:
    register_flows(pgflow_engine, Early)
    grant_worker(roles)
    # Enough to claim, not enough to record: completing archives the message.
    run_sql(
        roles.database,
        f'REVOKE DELETE ON pgmq.q_access_early FROM "{roles.worker}";'
        f'REVOKE INSERT ON pgmq.a_access_early FROM "{roles.worker}";'
        f'REVOKE UPDATE ON pgflow.step_states FROM "{roles.worker}";',
    )
    run_id = start_flow(pgflow_engine, Early, 1)
    message, events = await refused_start(roles)
    assert f'cannot work as role "{roles.worker_login}"' in message
    assert "missing privileges on 3 objects" in message
    assert "table pgflow.step_states (UPDATE)" in message
    assert "table pgmq.a_access_early (INSERT)" in message
    assert "table pgmq.q_access_early (DELETE)" in message
    assert f"pgflow db grant --worker {roles.worker_login}" in message
    assert not events.named("worker.started")
    [task] = tasks_of(pgflow_engine, run_id)
    assert (task["status"], task["attempts_count"]) == ("queued", 0)  # no attempt spent

    # The command line: one line naming the fix, exit status 1 (a supervisor restarts it).
    (tmp_path / "access_flows.py").write_text(EARLY_SOURCE)
    as_worker = libpq_url(roles.database.set(username=roles.worker_login))
    refused_cli = subprocess.run(
        [sys.executable, "-m", "pgflow", "run-worker", "access_flows"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "DATABASE_URL": as_worker},
        timeout=120,
        check=False,
    )
    assert refused_cli.returncode == 1, refused_cli.stderr
    last_line = refused_cli.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f'error: the worker cannot work as role "{roles.worker_login}"')


async def test_a_worker_that_cannot_open_all_its_connections_refuses_to_start(
    roles: Roles, pgflow_engine: Engine
) -> None:
    register_flows(pgflow_engine, Early)
    grant_worker(roles)
    # The engine's connection plus two of the worker's own.
    run_sql(roles.database, f'ALTER ROLE "{roles.worker_login}" CONNECTION LIMIT 3')
    worker_engine = roles.engine(roles.worker_login)
    events = EventLog()
    try:
        with pytest.raises(WorkerAccessError) as refused, anyio.fail_after(STARTUP_DEADLINE):
            await Worker([Early], worker_engine).serve()
    finally:
        events.close()
        worker_engine.dispose()
    assert (
        f"it could open only 2 of the {len(WORKER_CONNECTIONS)} connections a worker holds"
        in str(refused.value)
    )
    assert "connection 'service' failed: " in str(refused.value)
    assert "too many connections" in str(refused.value)
    assert not events.named("worker.started")


async def test_a_serving_worker_holds_the_connections_the_check_opens(
    roles: Roles, pgflow_engine: Engine
) -> None:
    register_flows(pgflow_engine, Early)
    grant_worker(roles)
    worker_engine = roles.engine(roles.worker_login)

    def worker_connections() -> list[str]:
        with pgflow_engine.begin() as connection:
            return sorted(
                connection.execute(
                    sa.text(
                        "SELECT application_name FROM pg_stat_activity"
                        " WHERE usename = :role AND application_name LIKE 'pgflow-worker:%'"
                    ),
                    {"role": roles.worker_login},
                ).scalars()
            )

    expected = sorted(f"pgflow-worker:{name}" for name in WORKER_CONNECTIONS)
    try:
        async with running_worker(worker_engine, Early, heartbeat_interval=0.2):
            # The report connection opens with the first report.
            await wait_until_finished(pgflow_engine, start_flow(pgflow_engine, Early, 1))
            await anyio.to_thread.run_sync(
                lambda: wait_until(lambda: worker_connections() == expected, what="connections")
            )
    finally:
        worker_engine.dispose()


async def test_a_grant_revoked_while_recording_is_reported_and_does_not_fail_the_task(
    roles: Roles, pgflow_engine: Engine
) -> None:
    register_flows(pgflow_engine, Early)
    grant_worker(roles)
    worker_engine = roles.engine(roles.worker_login)
    events = EventLog()
    try:
        async with running_worker(worker_engine, Early):
            await anyio.to_thread.run_sync(
                lambda: wait_until(lambda: events.named("worker.started"), what="the worker")
            )
            run_sql(roles.database, f'REVOKE INSERT ON pgmq.a_access_early FROM "{roles.worker}"')
            run_id = start_flow(pgflow_engine, Early, 21)

            def refused() -> list[Any]:
                return events.named("task.report_privilege_missing")

            [(problem, _), *_] = await anyio.to_thread.run_sync(
                lambda: wait_until(refused, what="the privilege problem to be reported")
            )
            [task] = tasks_of(pgflow_engine, run_id)
            assert (task["status"], task["attempts_count"]) == ("started", 1)
            run_sql(roles.database, f'GRANT INSERT ON pgmq.a_access_early TO "{roles.worker}"')
            run = await wait_until_finished(pgflow_engine, run_id)
    finally:
        events.close()
        worker_engine.dispose()
    assert (
        "may not record task outcomes (permission denied for table a_access_early)"
        in (problem["error"])
    )
    assert "pgflow db grant --worker" in problem["error"]
    assert run["status"] == "completed"
    assert run["output"] == {"double": 42}
    [task] = tasks_of(pgflow_engine, run_id)
    assert (task["status"], task["attempts_count"], task["error_message"]) == (
        "completed",
        1,
        None,
    )
    assert not events.named("task.failed")


async def test_a_worker_role_with_no_grants_at_all_is_told_the_fix(roles: Roles) -> None:
    message, events = await refused_start(roles)  # its group role was granted nothing
    assert f'cannot work as role "{roles.worker_login}"' in message
    assert "permission denied for schema" in message
    assert f"pgflow db grant --worker {roles.worker_login}" in message
    assert not events.named("worker.started")


def test_an_operator_role_operates_runs_and_a_client_is_told_which_role_may(
    roles: Roles, pgflow_engine: Engine
) -> None:
    register_flows(pgflow_engine, Early)
    operator = f"{roles.client}_op"
    run_sql(roles.database, f'CREATE ROLE "{operator}" LOGIN')
    try:
        done = pgflow_grant(roles.database, "--client", roles.client, "--operator", operator)
        assert done.returncode == 0, done.stderr
        assert f"operator {operator}: " in done.stdout
        run_sql(roles.database, f'ALTER ROLE "{roles.client}" LOGIN')
        client, ops = roles.engine(roles.client), roles.engine(operator)
        try:
            run_id = start_flow(client, Early, 1)
            with pytest.raises(InsufficientPrivilegeError) as refused:
                cancel_run(client, run_id)
            assert "may not cancel runs" in str(refused.value)
            assert "pgflow db grant --operator ROLE" in str(refused.value)
            assert cancel_run(ops, run_id, reason="operator").cancelled
            assert resume_run(ops, run_id).tasks_requeued == 1
            assert cancel_run(ops, run_id).cancelled
            retried = retry_run(ops, run_id).new_run_id
            assert retried is not None
            assert prune(ops, older_than=timedelta(0)).runs == 1
            with pytest.raises(InsufficientPrivilegeError, match="may not prune runs"):
                prune(client, older_than=timedelta(0))
        finally:
            client.dispose()
            ops.dispose()
    finally:
        run_sql(roles.database, f'DROP OWNED BY "{operator}"; DROP ROLE "{operator}"')


class AccessCharge(Flow, slug="access_charge"):
    @step
    def charge(self, input: Any) -> Any:
        return {"charged": input}


class AccessOrder(Flow, slug="access_order"):
    @subflow(AccessCharge)
    def pay(self, input: Any) -> Any:
        return input * 10


async def test_granted_roles_run_subflows(roles: Roles, pgflow_engine: Engine) -> None:
    """A client starts a parent (the gate writes the pending child start as its owner); the
    worker role runs the method and starts the child; a readonly role reads both links."""
    register_flows(pgflow_engine, AccessCharge, AccessOrder)
    done = pgflow_grant(
        roles.database,
        "--worker",
        roles.worker,
        "--client",
        roles.client,
        "--readonly",
        roles.readonly,
    )
    assert done.returncode == 0, done.stderr
    run_sql(
        roles.database, f'ALTER ROLE "{roles.client}" LOGIN; ALTER ROLE "{roles.readonly}" LOGIN'
    )
    worker_engine = roles.engine(roles.worker_login)
    client = roles.engine(roles.client)
    reader = roles.engine(roles.readonly)
    try:
        async with running_worker(worker_engine, AccessOrder, AccessCharge, poll_interval=0.1):
            order = start_flow(client, AccessOrder, 4)
            run = await anyio.to_thread.run_sync(
                functools.partial(wait_for_run, client, order, timeout=30)
            )
        assert run.output == {"pay": {"charge": {"charged": 40}}}
        details = describe_run(reader, order)
        assert details is not None
        [child] = details.children
        assert (child.flow_slug, child.status) == ("access_charge", "completed")
    finally:
        for engine in (worker_engine, client, reader):
            engine.dispose()
