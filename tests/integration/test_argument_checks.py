"""Arguments PostgreSQL would refuse are refused first, with a clear error, and the caller's
transaction goes on (issue "Robustness, round two", N5 and N8)."""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import Flow, get_run, start_flow, step
from pgflow.client import wait_for_run
from pgflow.operations import cancel_run
from tests.helpers.database import register_flows


class Order(Flow, slug="checked_order"):
    @step
    def charge(self, input: dict[str, Any]) -> int:
        return 1


def runs(connection: sa.Connection) -> int:
    return int(connection.execute(sa.text("SELECT count(*) FROM pgflow.runs")).scalar_one())


@pytest.mark.parametrize(
    ("key", "error"),
    [
        ("k" * 1_000_000, "idempotency_key must be at most 1000 bytes of UTF-8, got 1000000"),
        ("é" * 501, "idempotency_key must be at most 1000 bytes of UTF-8, got 1002"),
        ("a\x00b", "idempotency_key must not contain a NUL character"),
        ("a\udcffb", "idempotency_key must not contain a lone surrogate"),
        (b"bytes", "idempotency_key must be a str, got bytes"),
    ],
    ids=["1MB", "multibyte", "NUL", "surrogate", "bytes"],
)
def test_a_bad_idempotency_key_is_refused_and_the_transaction_goes_on(
    pgflow_engine: Engine, key: Any, error: str
) -> None:
    register_flows(pgflow_engine, Order)
    with pgflow_engine.begin() as connection:
        with pytest.raises((ValueError, TypeError)) as refused:
            start_flow(connection, Order, {}, idempotency_key=key)
        assert str(refused.value).startswith(error)
        start_flow(connection, Order, {}, idempotency_key="k" * 1000)  # the longest key works
        assert runs(connection) == 1


@pytest.mark.parametrize(
    ("reason", "error"),
    [
        ("r" * 1_000_000, "reason must be at most 2000 bytes of UTF-8"),
        ("stop\x00", "reason must not contain a NUL character"),
        ("stop \ud800", "reason must not contain a lone surrogate"),
        (42, "reason must be a str, got int"),
    ],
    ids=["1MB", "NUL", "surrogate", "int"],
)
def test_a_bad_cancel_reason_is_refused_and_the_transaction_goes_on(
    pgflow_engine: Engine, reason: Any, error: str
) -> None:
    register_flows(pgflow_engine, Order)
    with pgflow_engine.begin() as connection:
        run_id = start_flow(connection, Order, {})
        with pytest.raises((ValueError, TypeError)) as refused:
            cancel_run(connection, run_id, reason=reason)
        assert str(refused.value).startswith(error)
        assert cancel_run(connection, run_id, reason="").cancelled


def test_a_run_id_that_is_not_a_uuid_is_refused_clearly(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Order)
    with pytest.raises(TypeError, match=r"run_id must be a uuid.UUID or its text, got int 12345"):
        start_flow(pgflow_engine, Order, {}, run_id=12345)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"run_id must be a UUID, got 'order-1'"):
        get_run(pgflow_engine, "order-1")
    chosen = uuid.uuid4()
    assert start_flow(pgflow_engine, Order, {}, run_id=str(chosen)) == chosen


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -1.0])
def test_wait_for_run_refuses_a_timeout_that_is_not_a_finite_duration(
    pgflow_engine: Engine, timeout: float
) -> None:
    register_flows(pgflow_engine, Order)
    run_id = start_flow(pgflow_engine, Order, {})
    with pytest.raises(ValueError, match="timeout must be >= 0 seconds"):
        wait_for_run(pgflow_engine, run_id, timeout=timeout)
    with pytest.raises(ValueError, match="poll_interval must be > 0 seconds"):
        wait_for_run(pgflow_engine, run_id, poll_interval=math.nan)
