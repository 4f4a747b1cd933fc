"""pgflow_python.fail_task (extension/0040): failure records and non-retryable failures, driven
with raw SQL and continued with upstream's own functions."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from sqlalchemy.engine import URL, Engine

from pgflow.client import get_run_with_states, get_task_failures, wait_for_run
from pgflow.errors import RunFailedError

Db = psycopg.Connection[dict[str, Any]]
TRACEBACK = 'Traceback (most recent call last):\n  File "flows.py", line 3\nValueError: bad\n'


@pytest.fixture
def db(pgflow_database: URL) -> Iterator[Db]:
    conninfo = pgflow_database.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True, row_factory=dict_row) as connection:
        yield connection


def create_flow(db: Db, slug: str, *, max_attempts: int, base_delay: int = 2) -> None:
    """Two root steps a and b, and c after both."""
    db.execute("SELECT pgflow.create_flow(%s, %s, %s, 60)", (slug, max_attempts, base_delay))
    for step, deps in (("a", []), ("b", []), ("c", ["a", "b"])):
        db.execute("SELECT pgflow.add_step(%s, %s, %s::text[])", (slug, step, deps))


def start_run(db: Db, slug: str) -> uuid.UUID:
    row = db.execute("SELECT run_id FROM pgflow.start_flow(%s, '{}'::jsonb)", (slug,)).fetchone()
    assert row is not None
    run_id: uuid.UUID = row["run_id"]
    return run_id


def register(db: Db, slug: str) -> uuid.UUID:
    worker_id = uuid.uuid4()
    db.execute(
        "INSERT INTO pgflow.workers (worker_id, queue_name, function_name) VALUES (%s, %s, 't')",
        (worker_id, slug),
    )
    return worker_id


def claim_all(db: Db, slug: str, worker_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    """Start every visible task (upstream's start_tasks), by step slug."""
    rows = db.execute(
        "SELECT run_id, step_slug, task_index FROM pgflow.start_tasks("
        " %s, ARRAY(SELECT msg_id FROM pgmq.read(%s, 60, 10)), %s)",
        (slug, slug, worker_id),
    ).fetchall()
    return {row["step_slug"]: row for row in rows}


def fail(
    db: Db, worker_id: uuid.UUID, task: dict[str, Any], *, retryable: bool
) -> dict[str, Any] | None:
    return db.execute(
        "SELECT * FROM pgflow_python.fail_task(%s, %s, %s, %s, %s, %s, %s, %s)",
        (
            worker_id,
            task["run_id"],
            task["step_slug"],
            task["task_index"],
            "ValueError: bad",
            "ValueError",
            TRACEBACK,
            retryable,
        ),
    ).fetchone()


def complete_upstream(db: Db, task: dict[str, Any]) -> None:
    db.execute(
        "SELECT pgflow.complete_task(%s, %s, %s, %s::jsonb)",
        (task["run_id"], task["step_slug"], task["task_index"], json.dumps("ok")),
    )


def run_state(db: Db, run_id: uuid.UUID) -> dict[str, Any]:
    """Upstream's rows of a run, without ids and timestamps (flow slugs differ per test)."""
    run = db.execute(
        "SELECT status, remaining_steps, output, failed_at IS NOT NULL AS failed"
        " FROM pgflow.runs WHERE run_id = %s",
        (run_id,),
    ).fetchone()
    steps = db.execute(
        "SELECT step_slug, status, remaining_tasks, remaining_deps, error_message,"
        " failed_at IS NOT NULL AS failed FROM pgflow.step_states WHERE run_id = %s"
        " ORDER BY step_slug",
        (run_id,),
    ).fetchall()
    tasks = db.execute(
        "SELECT step_slug, task_index, status, attempts_count, error_message, output,"
        " failed_at IS NOT NULL AS failed FROM pgflow.step_tasks WHERE run_id = %s"
        " ORDER BY step_slug, task_index",
        (run_id,),
    ).fetchall()
    return {"run": run, "steps": steps, "tasks": tasks}


def queued_messages(db: Db, slug: str, run_id: uuid.UUID) -> int:
    row = db.execute(
        "SELECT count(*) AS n FROM pgmq.read(%s, 0, 100) WHERE message->>'run_id' = %s",
        (slug, str(run_id)),
    ).fetchone()
    assert row is not None
    n: int = row["n"]
    return n


def failures(db: Db, run_id: uuid.UUID) -> list[dict[str, Any]]:
    return db.execute(
        "SELECT * FROM pgflow_python.task_failures WHERE run_id = %s ORDER BY attempt", (run_id,)
    ).fetchall()


def test_a_retryable_failure_is_recorded_and_upstream_retries_it(db: Db) -> None:
    create_flow(db, "retry_me", max_attempts=3, base_delay=2)
    worker = register(db, "retry_me")
    run_id = start_run(db, "retry_me")
    tasks = claim_all(db, "retry_me", worker)
    before = datetime.now(UTC)

    reply = fail(db, worker, tasks["a"], retryable=True)

    assert reply is not None
    assert (reply["attempt"], reply["run_failed"]) == (1, False)
    # Upstream's delay for a first retry: base_delay * 2^1 seconds.
    assert before + timedelta(seconds=3) < reply["retry_at"] < before + timedelta(seconds=5)
    [record] = failures(db, run_id)
    assert record["flow_slug"] == "retry_me"
    assert (record["step_slug"], record["task_index"], record["attempt"]) == ("a", 0, 1)
    assert (record["error_type"], record["error_message"]) == ("ValueError", "ValueError: bad")
    assert record["traceback"] == TRACEBACK
    assert (record["retryable"], record["retry_at"]) == (True, reply["retry_at"])
    assert record["worker_id"] == worker
    task_a = next(t for t in run_state(db, run_id)["tasks"] if t["step_slug"] == "a")
    assert (task_a["status"], task_a["attempts_count"]) == ("queued", 1)

    # Upstream's own functions carry on: the retry runs and the run completes.
    db.execute(
        "SELECT pgmq.set_vt('retry_me', message_id, 0) FROM pgflow.step_tasks"
        " WHERE run_id = %s AND step_slug = 'a'",
        (run_id,),
    )
    complete_upstream(db, claim_all(db, "retry_me", worker)["a"])
    complete_upstream(db, tasks["b"])
    complete_upstream(db, claim_all(db, "retry_me", worker)["c"])
    assert run_state(db, run_id)["run"]["status"] == "completed"


def test_a_non_retryable_failure_ends_the_run_as_exhausted_attempts_do_upstream(db: Db) -> None:
    # The same run twice: with 5 attempts failed by us as non-retryable, and with 1 attempt
    # failed by upstream's fail_task. Upstream's rows must end the same.
    create_flow(db, "give_up", max_attempts=5)
    create_flow(db, "one_try", max_attempts=1)
    worker = register(db, "give_up")
    oracle_worker = register(db, "one_try")
    run_id = start_run(db, "give_up")
    oracle_run = start_run(db, "one_try")
    tasks = claim_all(db, "give_up", worker)
    oracle_tasks = claim_all(db, "one_try", oracle_worker)

    reply = fail(db, worker, tasks["a"], retryable=False)
    db.execute(
        "SELECT pgflow.fail_task(%s, 'a', 0, 'ValueError: bad')", (oracle_tasks["a"]["run_id"],)
    )

    assert reply is not None
    assert (reply["attempt"], reply["retry_at"], reply["run_failed"]) == (1, None, True)
    state = run_state(db, run_id)
    assert state == run_state(db, oracle_run)
    assert state["run"]["status"] == "failed"
    assert next(t for t in state["tasks"] if t["step_slug"] == "a")["attempts_count"] == 1
    [record] = failures(db, run_id)
    assert (record["retryable"], record["retry_at"]) == (False, None)
    # The run's other messages are archived: nothing of it is left to read.
    assert queued_messages(db, "give_up", run_id) == 0

    # A worker (TypeScript or ours) still holding b reports it through upstream: no change.
    complete_upstream(db, tasks["b"])
    complete_upstream(db, oracle_tasks["b"])
    assert run_state(db, run_id) == run_state(db, oracle_run)
    assert run_state(db, run_id)["run"]["status"] == "failed"


def test_only_the_worker_holding_the_task_can_fail_it(db: Db) -> None:
    create_flow(db, "fenced", max_attempts=3)
    worker = register(db, "fenced")
    other = register(db, "fenced")
    run_id = start_run(db, "fenced")
    tasks = claim_all(db, "fenced", worker)
    before = run_state(db, run_id)

    assert fail(db, other, tasks["a"], retryable=False) is None

    assert run_state(db, run_id) == before
    assert failures(db, run_id) == []


def test_run_failed_is_true_only_for_the_report_that_failed_the_run(db: Db) -> None:
    create_flow(db, "twice", max_attempts=1)
    worker = register(db, "twice")
    run_id = start_run(db, "twice")
    tasks = claim_all(db, "twice", worker)

    first = fail(db, worker, tasks["a"], retryable=True)
    second = fail(db, worker, tasks["b"], retryable=True)

    assert first is not None
    assert first["run_failed"] is True
    # The failed run cancelled b (extension/0060): its late report is not the worker's any more.
    assert second is None
    assert [r["step_slug"] for r in failures(db, run_id)] == ["a"]


def test_the_client_shows_the_recorded_failure(db: Db, pgflow_engine: Engine) -> None:
    create_flow(db, "shown", max_attempts=3)
    worker = register(db, "shown")
    run_id = start_run(db, "shown")
    tasks = claim_all(db, "shown", worker)
    fail(db, worker, tasks["b"], retryable=True)
    db.execute(
        "SELECT pgmq.set_vt('shown', message_id, 0) FROM pgflow.step_tasks"
        " WHERE run_id = %s AND step_slug = 'b'",
        (run_id,),
    )
    fail(db, worker, claim_all(db, "shown", worker)["b"], retryable=False)

    with pytest.raises(RunFailedError) as raised:
        wait_for_run(pgflow_engine, run_id, timeout=5)

    error = raised.value
    assert error.failure is not None
    assert (error.failure.step_slug, error.failure.attempt) == ("b", 2)
    assert error.failure.retryable is False
    assert error.traceback == TRACEBACK
    assert str(error).endswith("(not retryable)\n\nThe handler's traceback:\n" + TRACEBACK.rstrip())
    assert "step 'b' failed after 2 attempts: ValueError: bad" in str(error)
    recorded = get_task_failures(pgflow_engine, run_id)
    assert [(f.attempt, f.retryable, f.retry_at is None) for f in recorded] == [
        (1, True, False),
        (2, False, True),
    ]
    assert recorded[0].traceback == TRACEBACK
    assert recorded[0].worker_id == worker
    snapshot = get_run_with_states(pgflow_engine, run_id)
    assert snapshot is not None
    assert snapshot.failures == recorded
    assert snapshot.failures_of("b") == recorded
    assert snapshot.failures_of("a") == ()
