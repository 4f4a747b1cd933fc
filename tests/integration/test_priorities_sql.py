"""Priorities (extension/0081), read back as a TypeScript 0.8.1 worker reads: pgmq.read hands
out a queue's visible messages by msg_id, and a run's priority is written into that id. So a
high-priority run overtakes a backlog, equal priorities keep their order, the flow's default
applies to runs without their own, and held tasks (0080) are released by priority too."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import Concurrency, Flow, Job, step
from pgflow.client import enqueue, start_flow
from pgflow.errors import FlowDefinitionError, InvalidPriorityError
from tests.helpers.database import register_flows


class Report(Job, slug="prio_report"):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class Urgent(Job, slug="prio_urgent", priority=5):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class Limited(Job, slug="prio_limited", concurrency=Concurrency(1)):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class Chain(Flow, slug="prio_chain"):
    @step
    def first(self, input: Any) -> int:
        return 1

    @step(depends_on=["first"])
    def second(self, first: int) -> int:
        return first


def read_order(engine: Engine, queue: str) -> list[int]:
    """The "n" of each message's run, in the order pgmq.read hands them out."""
    with engine.begin() as connection:
        return list(
            connection.execute(
                sa.text(
                    "SELECT (r.input ->> 'n')::int FROM pgmq.read(:q, 30, 1000) AS m"
                    " JOIN pgflow.runs AS r ON r.run_id = (m.message ->> 'run_id')::uuid"
                    " ORDER BY m.msg_id"
                ),
                {"q": queue},
            ).scalars()
        )


def test_a_higher_priority_overtakes_a_backlog(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Report)
    with pgflow_engine.begin() as connection:
        for n in range(5):
            enqueue(connection, Report, {"n": n})
        enqueue(connection, Report, {"n": 100}, priority=10)
        enqueue(connection, Report, {"n": 101}, priority=10)
        enqueue(connection, Report, {"n": 50}, priority=1)
        enqueue(connection, Report, {"n": -1}, priority=-3)
        enqueue(connection, Report, {"n": 5})
    assert read_order(pgflow_engine, "prio_report") == [100, 101, 50, 0, 1, 2, 3, 4, 5, -1]


def test_one_message_at_a_time_as_a_worker_reads(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Report)
    with pgflow_engine.begin() as connection:
        for n in range(3):
            enqueue(connection, Report, {"n": n})
        enqueue(connection, Report, {"n": 9}, priority=2)
    seen = []
    with pgflow_engine.begin() as connection:
        for _ in range(4):
            message = connection.execute(
                sa.text("SELECT message FROM pgmq.read('prio_report', 30, 1)")
            ).scalar_one()
            seen.append(
                connection.execute(
                    sa.text("SELECT (input ->> 'n')::int FROM pgflow.runs WHERE run_id = :r"),
                    {"r": message["run_id"]},
                ).scalar_one()
            )
    assert seen == [9, 0, 1, 2]


def test_the_flow_default_applies_and_a_run_may_override_it(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Urgent)
    with pgflow_engine.begin() as connection:
        enqueue(connection, Urgent, {"n": 1}, priority=0)
        enqueue(connection, Urgent, {"n": 2})  # the flow's 5
        enqueue(connection, Urgent, {"n": 3}, priority=6)
    assert read_order(pgflow_engine, "prio_urgent") == [3, 2, 1]


def test_later_steps_of_a_run_keep_its_priority(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Chain)
    with pgflow_engine.begin() as connection:
        low = start_flow(connection, Chain, {"n": 0})
        high = start_flow(connection, Chain, {"n": 1}, priority=3)
    worker = uuid.uuid4()
    with pgflow_engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO pgflow.workers (worker_id, queue_name, function_name)"
                " VALUES (:w, 'prio_chain', 'test')"
            ),
            {"w": worker},
        )
        ids = connection.execute(sa.text("SELECT msg_id FROM pgmq.read('prio_chain', 30, 10)"))
        connection.execute(
            sa.text("SELECT * FROM pgflow.start_tasks('prio_chain', CAST(:ids AS bigint[]), :w)"),
            {"ids": list(ids.scalars()), "w": worker},
        )
        for run in (low, high):
            connection.execute(
                sa.text("SELECT pgflow.complete_task(:r, 'first', 0, '1'::jsonb)"), {"r": run}
            )
    with pgflow_engine.begin() as connection:
        order = connection.execute(
            sa.text(
                "SELECT (message ->> 'run_id')::uuid FROM pgmq.read('prio_chain', 30, 10)"
                " ORDER BY msg_id"
            )
        ).scalars()
        assert list(order) == [high, low]


def test_held_tasks_are_released_by_priority(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Limited)
    with pgflow_engine.begin() as connection:
        first = enqueue(connection, Limited, {"n": 0})
        for n in (1, 2):
            enqueue(connection, Limited, {"n": n})
        enqueue(connection, Limited, {"n": 3}, priority=1)
    with pgflow_engine.begin() as connection:
        connection.execute(
            sa.text(
                "SELECT pgmq.archive('prio_limited', t.message_id) FROM pgflow.step_tasks AS t"
                " WHERE t.run_id = :r"
            ),
            {"r": first},
        )
    assert read_order(pgflow_engine, "prio_limited") == [3]


@pytest.mark.parametrize("priority", [32768, -32768, 1.5, True, "1"])
def test_a_bad_priority_starts_nothing(pgflow_engine: Engine, priority: Any) -> None:
    register_flows(pgflow_engine, Report)
    with pytest.raises(InvalidPriorityError, match="-32767 to 32767"):
        enqueue(pgflow_engine, Report, {"n": 0}, priority=priority)
    with pgflow_engine.begin() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM pgflow.runs")).scalar_one() == 0


def test_a_bad_flow_priority_fails_at_definition() -> None:
    with pytest.raises(FlowDefinitionError, match="got 40000"):

        class TooHigh(Job, slug="prio_too_high", priority=40000):
            def perform(self, input: Any, ctx: Any) -> None:
                return None


def test_from_sql_a_priority_is_set_before_start_flow(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Report)
    with pgflow_engine.begin() as connection:
        for n, priority in ((0, None), (1, 4)):
            connection.execute(
                sa.text(
                    "SELECT pgflow_python.start_run('prio_report', CAST(:i AS jsonb), NULL,"
                    " NULL, CAST(:p AS integer))"
                ),
                {"i": f'{{"n": {n}}}', "p": priority},
            )
    assert read_order(pgflow_engine, "prio_report") == [1, 0]
