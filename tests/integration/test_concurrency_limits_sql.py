"""Per-key concurrency limits in SQL (extension/0080), driven by upstream's own functions
(pgmq.read, start_tasks, complete_task, fail_task) as a TypeScript 0.8.1 worker calls them.

Held messages are invisible in the queue; a completion, a last failure and a cancelled run
hand the slot to the oldest held task of the same key; keys do not wait for each other;
raising or removing a limit releases held tasks; bad keys fail start_flow naming the key.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import sql_only_flow
from pgflow import Job
from pgflow.client import enqueue, start_flow
from pgflow.errors import ConcurrencyKeyError
from pgflow.flow_control import Concurrency
from pgflow.operations import cancel_run
from tests.helpers.database import register_flows


class Sync(
    Job, slug="limit_sync", max_attempts=2, base_delay=1, concurrency=Concurrency(2, key="tenant")
):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class Nested(Job, slug="limit_nested", concurrency=Concurrency(1, key="account.id")):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


def start(engine: Engine, slug: str, flow_input: Any) -> uuid.UUID:
    with engine.begin() as connection:
        return sql_only_flow.start_run(connection, slug, flow_input)


def claim(engine: Engine, slug: str, worker: uuid.UUID) -> list[dict[str, Any]]:
    """Everything a worker can read now, started; returns the tasks' inputs and run ids."""
    with engine.begin() as connection:
        ids = (
            connection.execute(sa.text("SELECT msg_id FROM pgmq.read(:q, 30, 100)"), {"q": slug})
            .scalars()
            .all()
        )
        rows = (
            connection.execute(
                sa.text(
                    "SELECT run_id, step_slug, task_index, input"
                    " FROM pgflow.start_tasks(:q, CAST(:ids AS bigint[]), :w)"
                ),
                {"q": slug, "ids": list(ids), "w": worker},
            )
            .mappings()
            .all()
        )
    # upstream 0.8.1 hands a root step {"run": flow_input}
    return [{**r, "input": r["input"]["run"]} for r in rows]


def claim_within(
    engine: Engine, slug: str, worker: uuid.UUID, *, seconds: float
) -> list[dict[str, Any]]:
    """The first non-empty claim (a retry waits out its backoff); fails at the deadline."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        tasks = claim(engine, slug, worker)
        if tasks:
            return tasks
        time.sleep(0.1)
    raise AssertionError(f"nothing to claim in {slug} within {seconds} s")


def complete(engine: Engine, task: dict[str, Any]) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text("SELECT pgflow.complete_task(:r, :s, :i, CAST(:o AS jsonb))"),
            {
                "r": task["run_id"],
                "s": task["step_slug"],
                "i": task["task_index"],
                "o": json.dumps(None),
            },
        )


def fail(engine: Engine, task: dict[str, Any]) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text("SELECT pgflow.fail_task(:r, :s, :i, 'boom')"),
            {"r": task["run_id"], "s": task["step_slug"], "i": task["task_index"]},
        )


def held(engine: Engine, slug: str) -> int:
    with engine.begin() as connection:
        return int(
            connection.execute(
                sa.text("SELECT count(*) FROM pgflow_python.held_tasks WHERE flow_slug = :q"),
                {"q": slug},
            ).scalar_one()
        )


def tenants(tasks: list[dict[str, Any]]) -> list[str]:
    return sorted(t["input"]["tenant"] for t in tasks)


def test_a_key_runs_at_most_its_limit_and_freed_slots_pass_on(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Sync)
    worker = sql_only_flow.register_worker(pgflow_engine, "limit_sync")
    runs = [start(pgflow_engine, "limit_sync", {"tenant": "a", "n": n}) for n in range(5)]
    runs += [start(pgflow_engine, "limit_sync", {"tenant": "b", "n": n}) for n in range(2)]

    first = claim(pgflow_engine, "limit_sync", worker)
    assert tenants(first) == ["a", "a", "b", "b"]  # b does not wait behind a's backlog
    assert held(pgflow_engine, "limit_sync") == 3
    assert claim(pgflow_engine, "limit_sync", worker) == []

    a_tasks = [t for t in first if t["input"]["tenant"] == "a"]
    complete(pgflow_engine, a_tasks[0])
    released = claim(pgflow_engine, "limit_sync", worker)
    assert [t["input"]["n"] for t in released] == [2]  # the oldest held task of a

    fail(pgflow_engine, a_tasks[1])  # a retry keeps its slot: nothing else is released
    retried = claim_within(pgflow_engine, "limit_sync", worker, seconds=10)
    assert [t["input"]["n"] for t in retried] == [1]
    fail(pgflow_engine, retried[0])  # last attempt: the message leaves, the slot passes on
    assert [t["input"]["n"] for t in claim(pgflow_engine, "limit_sync", worker)] == [3]

    with pgflow_engine.begin() as connection:
        cancel_run(connection, runs[4])  # a held task of a cancelled run is no longer held
    assert held(pgflow_engine, "limit_sync") == 0
    with pgflow_engine.begin() as connection:
        slots: dict[str, int] = dict(
            connection.execute(
                sa.text(
                    "SELECT key_value #>> '{}', in_flight FROM pgflow_python.concurrency_slots"
                    " WHERE flow_slug = 'limit_sync'"
                )
            ).all()
        )
    assert slots == {"a": 2, "b": 2}


def test_raising_and_removing_a_limit_releases_held_tasks(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Sync)
    worker = sql_only_flow.register_worker(pgflow_engine, "limit_sync")
    for n in range(6):
        start(pgflow_engine, "limit_sync", {"tenant": "a", "n": n})
    assert len(claim(pgflow_engine, "limit_sync", worker)) == 2

    with pgflow_engine.begin() as connection:
        connection.execute(
            sa.text(
                "SELECT pgflow_python.set_concurrency_limit('limit_sync', NULL, 3, ARRAY['tenant'])"
            )
        )
    assert len(claim(pgflow_engine, "limit_sync", worker)) == 1
    with pgflow_engine.begin() as connection:
        connection.execute(
            sa.text("SELECT pgflow_python.set_concurrency_limit('limit_sync', NULL, NULL)")
        )
        triggers = connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'pgmq.q_limit_sync'::regclass"
                " AND tgname LIKE 'pgflow_python%'"
            )
        ).scalar_one()
    assert len(claim(pgflow_engine, "limit_sync", worker)) == 3
    assert triggers == 0  # a flow without limits pays nothing


def test_a_json_path_key(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Nested)
    worker = sql_only_flow.register_worker(pgflow_engine, "limit_nested")
    for account in (1, 1, 2):
        start(pgflow_engine, "limit_nested", {"account": {"id": account}})
    assert sorted(
        t["input"]["account"]["id"] for t in claim(pgflow_engine, "limit_nested", worker)
    ) == [1, 2]


@pytest.mark.parametrize(
    ("flow_input", "problem"),
    [
        ({"other": 1}, "has no such key"),
        ({"tenant": {"id": 1}}, "has an object there"),
        ({"tenant": [1]}, "has an array there"),
        ({"tenant": None}, "has null there"),
        ([1, 2], "has no such key"),
    ],
)
def test_a_bad_key_fails_start_flow_naming_it(
    pgflow_engine: Engine, flow_input: Any, problem: str
) -> None:
    register_flows(pgflow_engine, Sync)
    with pytest.raises(sa.exc.DBAPIError) as caught:
        start(pgflow_engine, "limit_sync", flow_input)
    message = str(caught.value)
    assert 'keyed on "tenant"' in message
    assert problem in message
    with pgflow_engine.begin() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM pgflow.runs")).scalar_one() == 0


def test_the_client_refuses_a_bad_key_before_the_database(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Sync, Nested)
    with pgflow_engine.begin() as connection:
        with pytest.raises(ConcurrencyKeyError, match=r"keyed on 'tenant'.*has no such key"):
            start_flow(connection, Sync, {"tenant_id": "a"})
        with pytest.raises(ConcurrencyKeyError, match=r"'account.id'.*an object"):
            enqueue(connection, Nested, {"account": {"id": {"x": 1}}})
        # the caller's transaction is still usable: nothing reached the database
        start_flow(connection, Nested, {"account": {"id": 7}})
        assert connection.execute(sa.text("SELECT count(*) FROM pgflow.runs")).scalar_one() == 1


def test_a_held_delayed_job_keeps_its_delay_when_released(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Nested)
    worker = sql_only_flow.register_worker(pgflow_engine, "limit_nested")
    first = enqueue(pgflow_engine, Nested, {"account": {"id": 1}})
    enqueue(pgflow_engine, Nested, {"account": {"id": 1}}, delay=3600)
    (task,) = claim(pgflow_engine, "limit_nested", worker)
    assert task["run_id"] == first
    complete(pgflow_engine, task)
    assert held(pgflow_engine, "limit_nested") == 0  # released, and holding the slot ...
    assert claim(pgflow_engine, "limit_nested", worker) == []  # ... but not before its delay
    with pgflow_engine.begin() as connection:
        hours = connection.execute(
            sa.text("SELECT extract(epoch FROM vt - now()) / 3600 FROM pgmq.q_limit_nested")
        ).scalar_one()
    assert 0.9 < hours <= 1
