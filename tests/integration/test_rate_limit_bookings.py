"""Rate bookings given back and named budgets kept consistent (extension/0082): a task whose
message is deleted or archived before it was read (its run cancelled) gives its booked start
back, so later starts are not booked behind dead ones; every use of a named limit must give
the same numbers, checked when the transaction commits."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import Job, RateLimit
from pgflow.client import enqueue
from pgflow.operations import cancel_run, list_limits, prune
from tests.helpers.database import register_flows


class TenAMinute(Job, slug="rate_ten_a_minute", rate_limit=RateLimit(10, per=60)):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class NamedA(Job, slug="rate_named_a", rate_limit=RateLimit.named("partner", 2, per=2)):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class NamedB(Job, slug="rate_named_b", rate_limit=RateLimit.named("partner", 2, per=2)):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


def waiting(engine: Engine) -> int:
    return sum(use.waiting for use in list_limits(engine, flow="rate_ten_a_minute"))


def test_a_cancelled_runs_booking_is_given_back(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, TenAMinute)
    runs = [enqueue(pgflow_engine, TenAMinute, {"n": n}) for n in range(30)]
    assert waiting(pgflow_engine) == 20  # two more minutes' worth booked ahead
    for run in runs[5:]:
        cancel_run(pgflow_engine, run)
    assert waiting(pgflow_engine) == 0
    later = enqueue(pgflow_engine, TenAMinute, {"n": 30})
    with pgflow_engine.begin() as connection:
        wait = connection.execute(
            sa.text(
                "SELECT extract(epoch FROM q.vt - clock_timestamp())"
                " FROM pgmq.q_rate_ten_a_minute AS q"
                " WHERE (q.message ->> 'run_id')::uuid = :r"
            ),
            {"r": later},
        ).scalar_one()
    assert wait < 5  # six starts in the window: booked now, not two periods out
    with pgflow_engine.begin() as connection:
        starts = connection.execute(sa.text("SELECT count(*) FROM pgflow_python.rate_starts"))
        assert starts.scalar_one() == 6


def set_limit(connection: sa.Connection, flow: str, max_starts: int, period: str) -> None:
    connection.execute(
        sa.text(
            "SELECT pgflow_python.set_rate_limit(:f, NULL, :m, CAST(:p AS interval),"
            " NULL, 'partner')"
        ),
        {"f": flow, "m": max_starts, "p": period},
    )


def test_a_named_limit_with_other_numbers_is_refused(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, NamedA, NamedB)
    with (
        pytest.raises(sa.exc.DataError, match='rate limit "partner" is used with different'),
        pgflow_engine.begin() as connection,
    ):
        set_limit(connection, "rate_named_a", 5, "2 seconds")
    with pgflow_engine.begin() as connection:
        numbers = connection.execute(
            sa.text("SELECT DISTINCT max_starts FROM pgflow_python.rate_limits")
        )
        assert list(numbers.scalars()) == [2]


def test_a_named_limit_changed_for_all_its_users_at_once(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, NamedA, NamedB)
    with pgflow_engine.begin() as connection:
        set_limit(connection, "rate_named_a", 5, "3 seconds")
        set_limit(connection, "rate_named_b", 5, "3 seconds")
    with pgflow_engine.begin() as connection:
        # Its only user changes it alone.
        connection.execute(
            sa.text("SELECT pgflow_python.set_rate_limit('rate_named_b', NULL, NULL, NULL)")
        )
        set_limit(connection, "rate_named_a", 7, "3 seconds")
    with pgflow_engine.begin() as connection:
        rules = connection.execute(
            sa.text("SELECT flow_slug, max_starts, period FROM pgflow_python.rate_limits")
        ).all()
    assert [tuple(r) for r in rules] == [("rate_named_a", 7, timedelta(seconds=3))]


class PerTenant(Job, slug="rate_per_tenant", rate_limit=RateLimit(2, per=60, key="tenant")):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


def test_idle_keys_are_forgotten_and_not_listed(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, PerTenant)
    for tenant in ("old", "older", "live"):
        run = enqueue(pgflow_engine, PerTenant, {"tenant": tenant})
        with pgflow_engine.begin() as connection:
            connection.execute(
                sa.text("SELECT pgmq.read('rate_per_tenant', 30, 1)")
            )  # a start: counted in rate_reads
            if tenant != "live":  # booked and read two periods ago
                connection.execute(
                    sa.text(
                        "SELECT pgmq.delete('rate_per_tenant', msg_id) FROM pgmq.q_rate_per_tenant"
                    )
                )
                for table in ("rate_starts", "rate_reads"):
                    connection.execute(
                        sa.text(
                            f"UPDATE pgflow_python.{table} SET at = at - interval '2 minutes'"
                            " WHERE key_value = to_jsonb(CAST(:t AS text))"
                        ),
                        {"t": tenant},
                    )
                connection.execute(
                    sa.text(
                        "UPDATE pgflow_python.rate_budget_keys"
                        " SET latest = latest - interval '2 minutes'"
                        " WHERE key_value = to_jsonb(CAST(:t AS text))"
                    ),
                    {"t": tenant},
                )
        assert run is not None
    listed = [use.key_value for use in list_limits(pgflow_engine, flow="rate_per_tenant")]
    assert listed == ["live"]
    report = prune(pgflow_engine, older_than=timedelta(days=1))
    assert report.extension_rows == 2
    with pgflow_engine.begin() as connection:
        rows = {
            table: connection.execute(
                sa.text(f"SELECT count(*) FROM pgflow_python.{table}")
            ).scalar_one()
            for table in ("rate_budget_keys", "rate_starts", "rate_reads")
        }
    assert rows == {"rate_budget_keys": 1, "rate_starts": 1, "rate_reads": 1}


def read_one(connection: sa.Connection, msg_id: int) -> list[int]:
    """What pgmq.read's UPDATE does to one message (the read the rate trigger sees)."""
    return list(
        connection.execute(
            sa.text(
                "UPDATE pgmq.q_rate_per_tenant SET read_ct = read_ct + 1,"
                " vt = clock_timestamp() + interval '30 seconds'"
                " WHERE msg_id = :m RETURNING msg_id"
            ),
            {"m": msg_id},
        ).scalars()
    )


def test_readers_of_one_key_never_wait_for_each_other(pgflow_engine: Engine) -> None:
    """Two claims reaching two keys in opposite orders: the second read of each key is
    postponed instead of waiting for the other claim (which deadlocked)."""
    register_flows(pgflow_engine, PerTenant)
    for tenant in ("a", "b", "a", "b"):
        enqueue(pgflow_engine, PerTenant, {"tenant": tenant})
    with pgflow_engine.begin() as connection:
        a1, b1, a2, b2 = connection.execute(
            sa.text("SELECT msg_id FROM pgmq.q_rate_per_tenant ORDER BY msg_id")
        ).scalars()
    with pgflow_engine.connect() as first, pgflow_engine.connect() as second:
        for connection in (first, second):
            connection.execute(sa.text("SET lock_timeout = '5s'"))
        assert read_one(first, a1) == [a1]
        assert read_one(second, b1) == [b1]
        assert read_one(first, b2) == []  # key b is being read by the other claim
        assert read_one(second, a2) == []
        first.commit()
        second.commit()
    with pgflow_engine.begin() as connection:
        postponed = connection.execute(
            sa.text(
                "SELECT msg_id, read_ct, extract(epoch FROM vt - clock_timestamp()) AS wait"
                " FROM pgmq.q_rate_per_tenant WHERE msg_id IN (:a, :b) ORDER BY msg_id"
            ),
            {"a": a2, "b": b2},
        ).all()
    assert [(row.msg_id, row.read_ct) for row in postponed] == [(a2, 0), (b2, 0)]
    assert all(row.wait < 1 for row in postponed)  # back within 100 ms, not lost
