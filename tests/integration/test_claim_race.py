"""A claim that overlaps the commit of new tasks hands every task it starts to the worker.

Regression: the claim used to be one statement; pgmq.read (volatile) saw messages committed
after the statement began, start_tasks marked their tasks started, and the statement's own join
on pgflow.step_tasks, still on the older snapshot, dropped them. The tasks stayed 'started'
with no handler, and the run never finished.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import Flow, _sql, start_flow, step
from tests.helpers.database import register_flows


class Racy(Flow, slug="racy"):
    @step
    def only(self, input: Any) -> Any:
        return input


def registered_worker(engine: Engine) -> uuid.UUID:
    worker_id = uuid.uuid4()
    with engine.begin() as connection:
        connection.execute(
            _sql.query("register_worker"),
            {"worker_id": worker_id, "queue_name": "racy", "function_name": "test"},
        )
    return worker_id


def wait_until_blocked_on_a_lock(engine: Engine, application_name: str) -> None:
    deadline = time.monotonic() + 10
    with engine.connect() as connection:
        while True:
            waiting = connection.execute(
                sa.text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE application_name = :name AND wait_event_type = 'Lock'"
                ),
                {"name": application_name},
            ).scalar_one()
            if waiting:
                return
            assert time.monotonic() < deadline, "the claim never reached the queue's lock"
            time.sleep(0.01)
            connection.rollback()


def test_tasks_committed_while_a_claim_runs_are_returned_by_that_claim(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Racy)
    worker_id = registered_worker(pgflow_engine)
    claimer = sa.create_engine(
        pgflow_engine.url,
        poolclass=sa.pool.NullPool,
        connect_args={"application_name": "racing-claim"},
    )
    claimed: list[Any] = []

    def claim() -> None:
        with claimer.begin() as connection:
            claimed.extend(
                connection.execute(
                    _sql.query("claim_task_batch"),
                    {"flow_slug": "racy", "worker_id": worker_id, "qty": 10, "vt": 5, "margin": 5},
                ).mappings()
            )

    with pgflow_engine.connect() as starter:
        # Hold the queue so the claim starts, then waits inside pgmq.read; commit a new run
        # (task + message) meanwhile; the claim then reads that message.
        starter.execute(sa.text("LOCK TABLE pgmq.q_racy IN EXCLUSIVE MODE"))
        racing = threading.Thread(target=claim)
        racing.start()
        wait_until_blocked_on_a_lock(pgflow_engine, "racing-claim")
        run_id = start_flow(starter, Racy, {"x": 1})
        starter.commit()
    racing.join(timeout=30)
    claimer.dispose()

    assert [(row["task"]["run_id"], row["attempt"]) for row in claimed] == [(str(run_id), 1)]
    with pgflow_engine.begin() as connection:
        status, worker = connection.execute(
            sa.text("SELECT status, last_worker_id FROM pgflow.step_tasks WHERE run_id = :id"),
            {"id": run_id},
        ).one()
    assert (status, worker) == ("started", worker_id)


@pytest.mark.parametrize("claim", ["claim_task_batch", "claim_tasks_isolated"])
def test_a_task_queued_after_the_claims_transaction_began_is_started_not_refused(
    pgflow_engine: Engine, claim: str
) -> None:
    """now() is the claim transaction's start; a task queued (and committed) later, then read by
    the claim, must not get a started_at before its queued_at (the table's check refused the
    whole claim)."""
    register_flows(pgflow_engine, Racy)
    worker_id = registered_worker(pgflow_engine)
    with pgflow_engine.connect() as claimer:
        began = claimer.execute(sa.text("SELECT now()")).scalar_one()  # fixes now()
        with pgflow_engine.begin() as starter:
            run_id = start_flow(starter, Racy, {"x": 1})
        rows = claimer.execute(
            _sql.query(claim),
            {"flow_slug": "racy", "worker_id": worker_id, "qty": 10, "vt": 5, "margin": 5},
        ).mappings()
        claimed = [(row["task"]["run_id"], row["attempt"]) for row in rows]
        claimer.commit()
    assert claimed == [(str(run_id), 1)]
    with pgflow_engine.begin() as connection:
        status, queued_at, started_at = connection.execute(
            sa.text(
                "SELECT status, queued_at, started_at FROM pgflow.step_tasks WHERE run_id = :id"
            ),
            {"id": run_id},
        ).one()
    assert status == "started"
    assert began < queued_at <= started_at


@pytest.mark.parametrize("claim", ["claim_task_batch", "claim_tasks_isolated"])
def test_messages_of_no_task_are_archived_not_read_again_forever(
    pgflow_engine: Engine, claim: str
) -> None:
    register_flows(pgflow_engine, Racy)
    worker_id = registered_worker(pgflow_engine)
    garbage = [
        {"hello": "world"},
        "not even an object",
        {"flow_slug": "racy", "run_id": str(uuid.uuid4()), "step_slug": "only", "task_index": 0},
    ]
    with pgflow_engine.begin() as connection:
        sent = [
            connection.execute(
                sa.text("SELECT pgmq.send('racy', CAST(:body AS jsonb))"),
                {"body": json.dumps(body)},
            ).scalar_one()
            for body in garbage
        ]
        run_id = start_flow(connection, Racy, {"x": 1})
    with pgflow_engine.begin() as connection:
        rows = connection.execute(
            _sql.query(claim),
            {"flow_slug": "racy", "worker_id": worker_id, "qty": 10, "vt": 0, "margin": 5},
        ).mappings()
        claimed = [row["task"]["run_id"] for row in rows]
    assert claimed == [str(run_id)]
    with pgflow_engine.begin() as connection:
        queued = connection.execute(sa.text("SELECT msg_id FROM pgmq.q_racy")).scalars().all()
        archived = connection.execute(sa.text("SELECT msg_id FROM pgmq.a_racy")).scalars().all()
    assert sorted(archived) == sorted(sent)
    assert len(queued) == 1  # the real task's message, reserved for its timeout


def test_lock_contention_in_an_isolated_claim_fails_the_claim_not_the_task(
    pgflow_engine: Engine,
) -> None:
    """A task whose row another transaction holds is not failed as "could not be started" (a
    rejection costs an attempt and, the last one, the run): the isolated claim raises, the
    worker backs off, and the task is claimed once the lock is gone."""
    register_flows(pgflow_engine, Racy)
    worker_id = registered_worker(pgflow_engine)
    with pgflow_engine.begin() as starter:
        run_id = start_flow(starter, Racy, {"x": 1})
    arguments = {"flow_slug": "racy", "worker_id": worker_id, "qty": 10, "vt": 5, "margin": 5}
    with pgflow_engine.connect() as holder, pgflow_engine.connect() as claimer:
        holder.execute(
            sa.text("SELECT 1 FROM pgflow.step_tasks WHERE run_id = :id FOR UPDATE"),
            {"id": run_id},
        )
        claimer.execute(sa.text("SET LOCAL lock_timeout = '200ms'"))
        with pytest.raises(sa.exc.OperationalError, match="lock timeout"):
            claimer.execute(_sql.query("claim_tasks_isolated"), arguments).all()
        claimer.rollback()
        holder.rollback()
        claimed = (
            claimer.execute(_sql.query("claim_tasks_isolated"), {**arguments, "vt": 0})
            .mappings()
            .all()
        )
        claimer.commit()
    assert [(row["task"]["run_id"], row["attempt"], row["rejection"]) for row in claimed] == [
        (str(run_id), 1, None)
    ]
