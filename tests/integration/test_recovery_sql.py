"""Stalled-task recovery (extension/0004) against a real server, driven with raw SQL."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from sqlalchemy.engine import URL

from tests.helpers import database

DEADLINE_S = 10.0
Db = psycopg.Connection[dict[str, Any]]


def connect(url: URL, *, autocommit: bool = True) -> Db:
    return psycopg.connect(database.libpq_url(url), autocommit=autocommit, row_factory=dict_row)


@pytest.fixture
def db(pgflow_database: URL) -> Iterator[Db]:
    with connect(pgflow_database) as connection:
        yield connection


def create_flow(
    db: Db, slug: str, *, max_attempts: int = 3, timeout: int = 60, steps: int = 1
) -> None:
    db.execute("SELECT pgflow.create_flow(%s, %s, 0, %s)", (slug, max_attempts, timeout))
    previous: list[str] = []
    for index in range(steps):
        db.execute("SELECT pgflow.add_step(%s, %s, %s)", (slug, f"s{index}", previous))
        previous = [f"s{index}"]


def start_run(db: Db, slug: str, flow_input: Any = None) -> uuid.UUID:
    row = db.execute(
        "SELECT run_id FROM pgflow.start_flow(%s, %s::jsonb)", (slug, json.dumps(flow_input))
    ).fetchone()
    assert row is not None
    run_id: uuid.UUID = row["run_id"]
    return run_id


def register_worker(db: Db, slug: str, function_name: str = "tests.py_worker") -> uuid.UUID:
    worker_id = uuid.uuid4()
    db.execute(
        "INSERT INTO pgflow.workers (worker_id, queue_name, function_name) VALUES (%s, %s, %s)",
        (worker_id, slug, function_name),
    )
    return worker_id


def claim(db: Db, slug: str, worker_id: uuid.UUID) -> list[dict[str, Any]]:
    """Read visible messages and start their tasks, as a worker does."""
    return db.execute(
        "SELECT run_id, step_slug, task_index, msg_id, input FROM pgflow.start_tasks("
        " %s, ARRAY(SELECT msg_id FROM pgmq.read(%s, 60, 10)), %s)",
        (slug, slug, worker_id),
    ).fetchall()


def claim_one(db: Db, slug: str, worker_id: uuid.UUID) -> dict[str, Any]:
    [task] = claim(db, slug, worker_id)
    return task


def complete(db: Db, task: dict[str, Any], output: Any) -> None:
    db.execute(
        "SELECT pgflow.complete_task(%s, %s, %s, %s::jsonb)",
        (task["run_id"], task["step_slug"], task["task_index"], json.dumps(output)),
    )


def silence(db: Db, worker_id: uuid.UUID, seconds: int = 300) -> None:
    """The worker's last heartbeat was `seconds` ago (a crashed process)."""
    db.execute(
        "UPDATE pgflow.workers SET last_heartbeat_at = now() - make_interval(secs => %s)"
        " WHERE worker_id = %s",
        (seconds, worker_id),
    )


def started_long_ago(db: Db, run_id: uuid.UUID, seconds: int) -> None:
    db.execute(
        "UPDATE pgflow.step_tasks SET queued_at = now() - make_interval(secs => %s + 1),"
        " started_at = now() - make_interval(secs => %s) WHERE run_id = %s AND status = 'started'",
        (seconds, seconds, run_id),
    )


def recover(db: Db, heartbeat_timeout: int = 30, max_requeues: int = 3) -> list[tuple[Any, ...]]:
    rows = db.execute(
        "SELECT run_id, step_slug, task_index, action"
        " FROM pgflow_python.recover_stalled_tasks(%s, %s)",
        (heartbeat_timeout, max_requeues),
    ).fetchall()
    return [(r["run_id"], r["step_slug"], r["task_index"], r["action"]) for r in rows]


def task_row(db: Db, run_id: uuid.UUID, step_slug: str = "s0") -> dict[str, Any]:
    row = db.execute(
        "SELECT t.status, t.attempts_count, t.started_at, t.error_message, t.output,"
        " q.vt <= clock_timestamp() AS visible, q.msg_id IS NOT NULL AS in_queue"
        " FROM pgflow.step_tasks t LEFT JOIN pgmq.q_" + slug_of(db, run_id) + " q"
        "  ON q.msg_id = t.message_id"
        " WHERE t.run_id = %s AND t.step_slug = %s",
        (run_id, step_slug),
    ).fetchone()
    assert row is not None
    return row


def slug_of(db: Db, run_id: uuid.UUID) -> str:
    row = db.execute("SELECT flow_slug FROM pgflow.runs WHERE run_id = %s", (run_id,)).fetchone()
    assert row is not None
    return str(row["flow_slug"]).lower()


def run_row(db: Db, run_id: uuid.UUID) -> dict[str, Any]:
    row = db.execute(
        "SELECT status, output FROM pgflow.runs WHERE run_id = %s", (run_id,)
    ).fetchone()
    assert row is not None
    return row


def requeue_count(db: Db, run_id: uuid.UUID) -> int | None:
    row = db.execute(
        "SELECT requeue_count FROM pgflow_python.task_requeues WHERE run_id = %s", (run_id,)
    ).fetchone()
    return None if row is None else int(row["requeue_count"])


def test_a_task_of_a_silent_worker_is_requeued_and_completes_on_a_second_claim(
    db: Db,
) -> None:
    create_flow(db, "crash")
    run_id = start_run(db, "crash", {"n": 1})
    crashed = register_worker(db, "crash")
    first = claim_one(db, "crash", crashed)
    assert recover(db) == []  # heartbeat still fresh
    silence(db, crashed)

    assert recover(db) == [(run_id, "s0", 0, "requeued")]
    task = task_row(db, run_id)
    assert task["status"] == "queued"
    assert task["started_at"] is None
    assert task["attempts_count"] == 1  # the stalled try stays counted
    assert task["visible"] is True
    assert requeue_count(db, run_id) == 1
    assert recover(db) == []  # nothing stalled any more

    # A late completion from the crashed worker, before anyone claimed it again, changes nothing.
    complete(db, first, "late")
    assert task_row(db, run_id)["status"] == "queued"
    assert run_row(db, run_id)["status"] == "started"

    second = claim_one(db, "crash", register_worker(db, "crash"))
    assert second["input"] == {"run": {"n": 1}}
    assert task_row(db, run_id)["attempts_count"] == 2
    complete(db, second, {"done": True})
    assert run_row(db, run_id) == {"status": "completed", "output": {"s0": {"done": True}}}
    assert task_row(db, run_id)["in_queue"] is False  # archived once completed


def test_completion_is_recorded_once_when_the_stalled_worker_reports_after_a_reclaim(
    db: Db,
) -> None:
    create_flow(db, "late_report", steps=2)
    run_id = start_run(db, "late_report")
    slow = register_worker(db, "late_report")
    first = claim_one(db, "late_report", slow)
    silence(db, slow)
    assert recover(db) == [(run_id, "s0", 0, "requeued")]
    second = claim_one(db, "late_report", register_worker(db, "late_report"))

    complete(db, first, "from the stalled worker")  # the task is started again: upstream takes it
    complete(db, second, "from the second worker")  # already completed: ignored
    row = db.execute(
        "SELECT t.output, s.remaining_tasks, s.status FROM pgflow.step_tasks t"
        " JOIN pgflow.step_states s USING (run_id, step_slug)"
        " WHERE t.run_id = %s AND t.step_slug = 's0'",
        (run_id,),
    ).fetchone()
    assert row == {"output": "from the stalled worker", "remaining_tasks": 0, "status": "completed"}
    dependents = db.execute(
        "SELECT count(*) AS n FROM pgflow.step_tasks WHERE run_id = %s AND step_slug = 's1'",
        (run_id,),
    ).fetchone()
    assert dependents == {"n": 1}


def test_a_task_past_its_timeout_is_requeued_even_with_a_live_worker(db: Db) -> None:
    create_flow(db, "overrun", timeout=10)
    run_id = start_run(db, "overrun")
    alive = register_worker(db, "overrun")
    claim_one(db, "overrun", alive)

    started_long_ago(db, run_id, 10 + 30 - 2)  # inside timeout + margin
    assert recover(db, heartbeat_timeout=30) == []
    started_long_ago(db, run_id, 10 + 30 + 2)
    assert recover(db, heartbeat_timeout=30) == [(run_id, "s0", 0, "requeued")]
    reason = db.execute(
        "SELECT last_reason FROM pgflow_python.task_requeues WHERE run_id = %s", (run_id,)
    ).fetchone()
    assert reason is not None
    assert f"worker {alive} (tests.py_worker) is alive" in reason["last_reason"]
    assert "timeout of 10 s plus 30 s" in reason["last_reason"]


def test_a_step_timeout_overrides_the_flow_timeout(db: Db) -> None:
    db.execute("SELECT pgflow.create_flow('step_timeout', 3, 0, 600)")
    db.execute("SELECT pgflow.add_step('step_timeout', 's0', timeout => 5)")
    run_id = start_run(db, "step_timeout")
    claim_one(db, "step_timeout", register_worker(db, "step_timeout"))
    started_long_ago(db, run_id, 5 + 30 + 1)
    assert recover(db) == [(run_id, "s0", 0, "requeued")]


def test_after_max_requeues_stalls_fail_the_attempt_and_exhaustion_fails_the_run(
    db: Db,
) -> None:
    create_flow(db, "poison", max_attempts=3)
    run_id = start_run(db, "poison")

    crashed = register_worker(db, "poison")
    claim_one(db, "poison", crashed)
    silence(db, crashed)
    assert recover(db, max_requeues=1) == [(run_id, "s0", 0, "requeued")]

    crashed = register_worker(db, "poison")
    claim_one(db, "poison", crashed)
    silence(db, crashed, 45)
    assert recover(db, max_requeues=1) == [(run_id, "s0", 0, "failed")]
    task = task_row(db, run_id)
    assert task["status"] == "queued"  # fail_task retries: attempt 2 of 3 was used
    assert task["visible"] is True  # base_delay 0
    assert task["error_message"].startswith(f"stalled: worker {crashed} (tests.py_worker)")
    assert re.search(r"sent no heartbeat for 4[5-9] s \(limit 30 s\)", task["error_message"])
    assert "attempt 2 of 3; already put back 1 times (max_requeues 1)" in task["error_message"]
    assert requeue_count(db, run_id) == 1

    crashed = register_worker(db, "poison")
    claim_one(db, "poison", crashed)
    silence(db, crashed)
    assert recover(db, max_requeues=1) == [(run_id, "s0", 0, "failed")]
    task = task_row(db, run_id)
    assert task["status"] == "failed"
    assert task["attempts_count"] == 3
    assert "attempt 3 of 3" in task["error_message"]
    assert task["in_queue"] is False
    assert run_row(db, run_id)["status"] == "failed"
    step = db.execute(
        "SELECT status, error_message FROM pgflow.step_states WHERE run_id = %s", (run_id,)
    ).fetchone()
    assert step is not None
    assert step["status"] == "failed"
    assert step["error_message"] == task["error_message"]


def test_a_stalled_task_with_no_attempts_left_is_failed_not_requeued(db: Db) -> None:
    create_flow(db, "one_shot", max_attempts=1)
    run_id = start_run(db, "one_shot")
    crashed = register_worker(db, "one_shot")
    claim_one(db, "one_shot", crashed)
    silence(db, crashed)
    assert recover(db, max_requeues=3) == [(run_id, "s0", 0, "failed")]
    task = task_row(db, run_id)
    assert task["status"] == "failed"
    assert task["error_message"].endswith("attempt 1 of 1; no attempts left")
    assert run_row(db, run_id)["status"] == "failed"
    assert requeue_count(db, run_id) is None


def test_healthy_and_draining_workers_keep_their_tasks(db: Db) -> None:
    create_flow(db, "healthy", timeout=60)
    run_id = start_run(db, "healthy")
    worker = register_worker(db, "healthy")
    claim_one(db, "healthy", worker)
    started_long_ago(db, run_id, 60)  # past the timeout, still inside the margin
    assert recover(db) == []
    db.execute("UPDATE pgflow.workers SET deprecated_at = now() WHERE worker_id = %s", (worker,))
    assert recover(db) == []  # draining, and still heartbeating
    task = task_row(db, run_id)
    assert (task["status"], task["attempts_count"]) == ("started", 1)
    assert requeue_count(db, run_id) is None

    silence(db, worker, 31)
    assert recover(db) == [(run_id, "s0", 0, "requeued")]
    reason = db.execute("SELECT last_reason FROM pgflow_python.task_requeues").fetchone()
    assert reason is not None
    assert (
        f"worker {worker} (tests.py_worker, deprecated) sent no heartbeat"
        in (reason["last_reason"])
    )


def test_typescript_workers_and_deleted_worker_rows_are_treated_alike(db: Db) -> None:
    create_flow(db, "mixed")
    ts_run = start_run(db, "mixed")
    edge = register_worker(db, "mixed", function_name="pgflow-edge-worker/mixed_worker")
    claim_one(db, "mixed", edge)
    gone_run = start_run(db, "mixed")
    gone = register_worker(db, "mixed")
    claim_one(db, "mixed", gone)
    silence(db, edge)
    db.execute("DELETE FROM pgflow.workers WHERE worker_id = %s", (gone,))

    recovered = recover(db)
    assert sorted(recovered) == sorted(
        [(ts_run, "s0", 0, "requeued"), (gone_run, "s0", 0, "requeued")]
    )
    reasons = {
        row["run_id"]: row["last_reason"]
        for row in db.execute("SELECT run_id, last_reason FROM pgflow_python.task_requeues")
    }
    assert f"worker {edge} (pgflow-edge-worker/mixed_worker)" in reasons[ts_run]
    assert "its pgflow.workers row was deleted" in reasons[gone_run]


def test_only_the_stalled_task_of_a_map_step_is_requeued(db: Db) -> None:
    db.execute("SELECT pgflow.create_flow('fan_out', 3, 0, 60)")
    db.execute("SELECT pgflow.add_step('fan_out', 'each', step_type => 'map')")
    run_id = start_run(db, "fan_out", ["a", "b", "c"])
    live, crashed = register_worker(db, "fan_out"), register_worker(db, "fan_out")
    db.execute(
        "SELECT * FROM pgflow.start_tasks('fan_out', ARRAY(SELECT msg_id FROM pgmq.read("
        " 'fan_out', 60, 2)), %s)",
        (live,),
    )
    lost = claim_one(db, "fan_out", crashed)
    silence(db, crashed)
    assert recover(db) == [(run_id, "each", lost["task_index"], "requeued")]
    statuses = db.execute(
        "SELECT task_index, status FROM pgflow.step_tasks WHERE run_id = %s ORDER BY task_index",
        (run_id,),
    ).fetchall()
    assert [row["status"] for row in statuses] == [
        "queued" if index == lost["task_index"] else "started" for index in range(3)
    ]


def test_two_concurrent_sweeps_do_not_both_act(pgflow_database: URL, db: Db) -> None:
    create_flow(db, "contended")
    run_id = start_run(db, "contended")
    crashed = register_worker(db, "contended")
    claim_one(db, "contended", crashed)
    silence(db, crashed)

    db.execute("SET lock_timeout = '5s'")  # a sweep that waited would fail, not hang
    with connect(pgflow_database, autocommit=False) as first:
        assert recover(first) == [(run_id, "s0", 0, "requeued")]
        # A task that stalls while the first sweep is still open is not the second sweep's
        # business either: it returns at once and leaves everything to the next sweep.
        other_run = start_run(db, "contended")
        other = register_worker(db, "contended")
        claim_one(db, "contended", other)
        silence(db, other)
        started = time.monotonic()
        assert recover(db) == []
        assert time.monotonic() - started < DEADLINE_S
        first.commit()
    assert recover(db) == [(other_run, "s0", 0, "requeued")]
    assert requeue_count(db, run_id) == 1


def test_a_sweep_skips_what_others_hold_instead_of_waiting(pgflow_database: URL, db: Db) -> None:
    create_flow(db, "busy")
    run_id = start_run(db, "busy")
    crashed = register_worker(db, "busy")
    claim_one(db, "busy", crashed)
    silence(db, crashed)

    db.execute("SET lock_timeout = '5s'")  # a sweep that waited would fail, not hang
    with connect(pgflow_database, autocommit=False) as reporter:
        # complete_task and fail_task lock the run first: such a transaction is in flight.
        reporter.execute("SELECT 1 FROM pgflow.runs WHERE run_id = %s FOR UPDATE", (run_id,))
        started = time.monotonic()
        assert recover(db) == []
        assert time.monotonic() - started < DEADLINE_S
        reporter.rollback()
    assert recover(db) == [(run_id, "s0", 0, "requeued")]


def test_a_started_task_without_its_message_is_left_alone(db: Db) -> None:
    create_flow(db, "archived")
    run_id = start_run(db, "archived")
    crashed = register_worker(db, "archived")
    task = claim_one(db, "archived", crashed)
    silence(db, crashed)
    # What upstream 0.14 does to a task it gives up on: archive the message, keep 'started'.
    db.execute("SELECT pgmq.archive('archived', %s::bigint)", (task["msg_id"],))
    assert recover(db) == []
    assert task_row(db, run_id)["status"] == "started"


def test_tasks_of_failed_runs_are_left_alone(db: Db) -> None:
    create_flow(db, "doomed", max_attempts=1, steps=1)
    db.execute("SELECT pgflow.add_step('doomed', 'other')")
    run_id = start_run(db, "doomed")
    crashed = register_worker(db, "doomed")
    tasks = claim(db, "doomed", crashed)
    assert len(tasks) == 2
    failing = next(t for t in tasks if t["step_slug"] == "other")
    db.execute("SELECT pgflow.fail_task(%s, 'other', 0, 'boom')", (failing["run_id"],))
    assert run_row(db, run_id)["status"] == "failed"
    silence(db, crashed)
    assert recover(db) == []
    assert task_row(db, run_id)["status"] == "cancelled"  # by the failed run (extension/0060)


def test_a_requeue_wakes_listeners(pgflow_database: URL, db: Db) -> None:
    create_flow(db, "wake_on_requeue")
    db.execute("SELECT pgflow_python.ensure_wakeup_trigger('wake_on_requeue')")
    run_id = start_run(db, "wake_on_requeue")
    crashed = register_worker(db, "wake_on_requeue")
    claim_one(db, "wake_on_requeue", crashed)
    silence(db, crashed)
    with psycopg.connect(database.libpq_url(pgflow_database), autocommit=True) as listener:
        listener.execute("LISTEN pgflow_wakeup")
        assert recover(db) == [(run_id, "s0", 0, "requeued")]
        payloads = [n.payload for n in listener.notifies(timeout=DEADLINE_S, stop_after=1)]
    assert payloads == ["wake_on_requeue"]


@pytest.mark.parametrize(
    ("heartbeat_timeout", "max_requeues", "message"),
    [
        (0, 3, "heartbeat_timeout_seconds must be at least 1, got 0"),
        (30, -1, "max_requeues must be 0 or more, got -1"),
    ],
)
def test_nonsense_arguments_are_refused(
    db: Db, heartbeat_timeout: int, max_requeues: int, message: str
) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        recover(db, heartbeat_timeout, max_requeues)
