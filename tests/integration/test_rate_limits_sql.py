"""Rate limits in SQL (extension/0082), read back as a TypeScript 0.8.1 worker reads: a task's
start is booked when its message is sent, and the message stays invisible until then. At most
N bookings per period per key and budget; keys and budgets apart; a named budget shared by two
jobs; a retry books again; bad keys fail the start naming the key."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import sql_only_flow
from pgflow import Concurrency, Flow, Job, RateLimit, map_step, step
from pgflow.client import enqueue
from pgflow.errors import FlowDefinitionError, RateLimitKeyError
from tests.helpers.database import register_flows

TWO_SECONDS = timedelta(seconds=2)
SHARED = RateLimit.named("shared-api", 2, per=TWO_SECONDS)


class Paced(Job, slug="rate_paced", rate_limit=RateLimit(3, per=TWO_SECONDS, key="tenant")):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class Retried(
    Job, slug="rate_retried", max_attempts=2, base_delay=1, rate_limit=RateLimit(1, per=60)
):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class UsesShared(Job, slug="rate_shared_a", rate_limit=SHARED):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class AlsoShared(Job, slug="rate_shared_b", rate_limit=SHARED):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class Both(
    Job, slug="rate_both", concurrency=Concurrency(1), rate_limit=RateLimit(1, per=TWO_SECONDS)
):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


def offsets(engine: Engine, *queues: str) -> list[float]:
    """Each message's visibility time, in whole seconds after the earliest."""
    union = " UNION ALL ".join(f"SELECT vt FROM pgmq.q_{q}" for q in queues)
    with engine.begin() as connection:
        times = connection.execute(sa.text(f"SELECT vt FROM ({union}) AS v ORDER BY vt"))
        values = [t.timestamp() for t in times.scalars()]
    return [round(v - values[0]) for v in values]


def test_starts_beyond_the_budget_are_booked_a_period_later(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Paced)
    with pgflow_engine.begin() as connection:
        for n in range(7):
            enqueue(connection, Paced, {"tenant": "a", "n": n})
    assert offsets(pgflow_engine, "rate_paced") == [0, 0, 0, 2, 2, 2, 4]
    with pgflow_engine.begin() as connection:
        readable = connection.execute(
            sa.text("SELECT count(*) FROM pgmq.read('rate_paced', 30, 10)")
        )
        assert readable.scalar_one() == 3


def test_keys_have_their_own_budgets(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Paced)
    with pgflow_engine.begin() as connection:
        for n in range(4):
            enqueue(connection, Paced, {"tenant": "a", "n": n})
        for n in range(3):
            enqueue(connection, Paced, {"tenant": "b", "n": n})
    with pgflow_engine.begin() as connection:
        tenants = connection.execute(
            sa.text(
                "SELECT r.input ->> 'tenant' FROM pgmq.read('rate_paced', 30, 10) AS m"
                " JOIN pgflow.runs AS r ON r.run_id = (m.message ->> 'run_id')::uuid"
            )
        ).scalars()
        assert sorted(tenants) == ["a", "a", "a", "b", "b", "b"]


def test_a_named_budget_is_shared(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, UsesShared, AlsoShared)
    with pgflow_engine.begin() as connection:
        enqueue(connection, UsesShared, {})
        enqueue(connection, AlsoShared, {})
        enqueue(connection, UsesShared, {})
        enqueue(connection, AlsoShared, {})
    assert offsets(pgflow_engine, "rate_shared_a", "rate_shared_b") == [0, 0, 2, 2]


def test_a_retry_books_another_start(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Retried)
    worker = sql_only_flow.register_worker(pgflow_engine, "rate_retried")
    enqueue(pgflow_engine, Retried, {})
    with pgflow_engine.begin() as connection:
        ids = connection.execute(sa.text("SELECT msg_id FROM pgmq.read('rate_retried', 30, 1)"))
        task = connection.execute(
            sa.text(
                "SELECT run_id, step_slug, task_index"
                " FROM pgflow.start_tasks('rate_retried', CAST(:ids AS bigint[]), :w)"
            ),
            {"ids": list(ids.scalars()), "w": worker},
        ).one()
    with pgflow_engine.begin() as connection:
        connection.execute(
            sa.text("SELECT pgflow.fail_task(:r, :s, :i, 'boom')"),
            {"r": task.run_id, "s": task.step_slug, "i": task.task_index},
        )
        waits = connection.execute(
            sa.text("SELECT extract(epoch FROM vt - clock_timestamp()) FROM pgmq.q_rate_retried")
        ).scalar_one()
    # One start a minute: the retry (base_delay 1) waits for the next minute's budget.
    assert 55 < waits <= 60


def test_a_held_task_is_booked_when_its_slot_frees(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Both)
    with pgflow_engine.begin() as connection:
        first = enqueue(connection, Both, {"n": 0})
        enqueue(connection, Both, {"n": 1})
    with pgflow_engine.begin() as connection:
        held = connection.execute(sa.text("SELECT count(*) FROM pgflow_python.held_tasks"))
        assert held.scalar_one() == 1
        connection.execute(
            sa.text(
                "SELECT pgmq.archive('rate_both', t.message_id) FROM pgflow.step_tasks AS t"
                " WHERE t.run_id = :r"
            ),
            {"r": first},
        )
        waits = connection.execute(
            sa.text("SELECT extract(epoch FROM vt - clock_timestamp()) FROM pgmq.q_rate_both")
        ).scalar_one()
    assert 1 < waits <= 2  # released into the slot, then booked after the first start


def test_a_start_without_the_key_starts_nothing(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Paced)
    with pytest.raises(RateLimitKeyError, match="rate limit keyed on 'tenant'"):
        enqueue(pgflow_engine, Paced, {"n": 1})
    with (
        pgflow_engine.begin() as connection,
        pytest.raises(sa.exc.DataError, match='rate limit keyed on "tenant"'),
    ):
        sql_only_flow.start_run(connection, "rate_paced", {"tenant": {"id": 1}})
    with pgflow_engine.begin() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM pgflow.runs")).scalar_one() == 0


def test_removing_the_limit_books_nothing_more(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Paced)
    with pgflow_engine.begin() as connection:
        connection.execute(
            sa.text("SELECT pgflow_python.set_rate_limit('rate_paced', NULL, NULL, NULL)")
        )
        for n in range(5):
            enqueue(connection, Paced, {"tenant": "a", "n": n})
    assert offsets(pgflow_engine, "rate_paced") == [0] * 5  # as fast as they were sent
    with pgflow_engine.begin() as connection:
        triggers = connection.execute(
            sa.text(
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'pgmq.q_rate_paced'::regclass"
                " AND tgname LIKE 'pgflow_python_rate%'"
            )
        )
        assert triggers.scalar_one() == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0, TWO_SECONDS), "at least 1"),
        ((-1, TWO_SECONDS), "at least 1"),
        ((2, timedelta(0)), "positive period"),
        ((2, -3), "positive period"),
        ((2, "1m"), "timedelta"),
        ((2.5, TWO_SECONDS), "whole number"),
    ],
)
def test_bad_rate_limits_fail_at_definition(args: tuple[Any, Any], message: str) -> None:
    with pytest.raises(FlowDefinitionError, match=message):
        RateLimit(*args)


def test_bad_names_and_bad_sql_arguments(pgflow_engine: Engine) -> None:
    with pytest.raises(FlowDefinitionError, match="name"):
        RateLimit.named(":odd", 1, per=1)
    register_flows(pgflow_engine, Paced)
    for max_starts, period in ((0, "1 second"), (1, "0 seconds"), (1, "-1 second")):
        with pgflow_engine.begin() as connection, pytest.raises(sa.exc.DataError):
            connection.execute(
                sa.text(
                    "SELECT pgflow_python.set_rate_limit("
                    "'rate_paced', NULL, :m, CAST(:p AS interval))"
                ),
                {"m": max_starts, "p": period},
            )


class Pipeline(Flow, slug="rate_pipeline"):
    @step(concurrency=Concurrency(1, key="tenant"))
    def fetch(self, input: dict[str, Any]) -> list[int]:
        return [1, 2, 3]

    @map_step(array=fetch, rate_limit=RateLimit(2, per=TWO_SECONDS, key="tenant"))
    def call(self, item: int) -> int:
        return item


def test_a_steps_own_limits(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Pipeline)
    worker = sql_only_flow.register_worker(pgflow_engine, "rate_pipeline")
    with pgflow_engine.begin() as connection:
        for n in range(3):
            sql_only_flow.start_run(connection, "rate_pipeline", {"tenant": "a", "n": n})
        held = connection.execute(sa.text("SELECT count(*) FROM pgflow_python.held_tasks"))
        assert held.scalar_one() == 2  # fetch: one at a time per tenant
    with pgflow_engine.begin() as connection:
        ids = connection.execute(sa.text("SELECT msg_id FROM pgmq.read('rate_pipeline', 30, 10)"))
        task = connection.execute(
            sa.text(
                "SELECT run_id, step_slug, task_index"
                " FROM pgflow.start_tasks('rate_pipeline', CAST(:ids AS bigint[]), :w)"
            ),
            {"ids": list(ids.scalars()), "w": worker},
        ).one()
        connection.execute(
            sa.text("SELECT pgflow.complete_task(:r, 'fetch', 0, '[1, 2, 3]'::jsonb)"),
            {"r": task.run_id},
        )
    # The map's three tasks: two now, one a period later; the next fetch released.
    with pgflow_engine.begin() as connection:
        steps = connection.execute(
            sa.text(
                "SELECT message ->> 'step_slug' AS step,"
                " CASE WHEN vt = 'infinity' THEN -1"
                " ELSE round(extract(epoch FROM vt - clock_timestamp())) END AS wait"
                " FROM pgmq.q_rate_pipeline ORDER BY 1, 2"
            )
        ).all()
    assert [(s.step, int(s.wait) if s.wait < 0 else max(int(s.wait), 0)) for s in steps] == [
        ("call", 0),
        ("call", 0),
        ("call", 2),
        ("fetch", -1),  # the third run's, still held
        ("fetch", 0),
    ]
