"""The queue gauges count the tasks waiting on flow control (docs/observability.md): held for a
concurrency slot, and booked for later by a rate limit."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from pgflow import Concurrency, Job, RateLimit, enqueue
from tests.helpers.database import register_flows
from tests.integration.test_otel import Telemetry, engine, otel

__all__ = ["engine", "otel"]


class Held(Job, slug="otel_held", concurrency=Concurrency(1, key="tenant")):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class Booked(Job, slug="otel_booked", rate_limit=RateLimit(2, per=600)):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


def test_waiting_on_limits_and_rate_budgets(engine: Engine, otel: Telemetry) -> None:
    register_flows(engine, Held, Booked)
    for n in range(4):
        enqueue(engine, Held, {"tenant": "acme" if n < 3 else "globex"})
        enqueue(engine, Booked, {"n": n})

    held, booked = {"pgflow.flow_slug": "otel_held"}, {"pgflow.flow_slug": "otel_booked"}
    limit = {tuple(a.items()): v for a, v in otel.points("pgflow.queue.waiting_on_limit")}
    rate = {tuple(a.items()): v for a, v in otel.points("pgflow.queue.waiting_on_rate")}
    assert limit[tuple(held.items())] == 2  # acme's second and third
    assert rate[tuple(booked.items())] == 2  # the third and fourth start in ten minutes
    assert limit[tuple(booked.items())] == 0
