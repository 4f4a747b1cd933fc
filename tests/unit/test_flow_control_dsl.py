"""Concurrency(...) on flows and jobs: validation at class definition, what compiles, and the
definition round trip that Alembic revisions rely on."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from pgflow import Concurrency, Flow, Job, RateLimit, map_step, step
from pgflow.compiler import compile_flow
from pgflow.definition import FlowDefinition
from pgflow.dsl import definition_of
from pgflow.errors import FlowDefinitionError


class Sync(Job, slug="sync", concurrency=Concurrency(2, key="customer.id")):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class Pipeline(Flow, slug="pipeline", concurrency=Concurrency(3)):
    @step
    def fetch(self, input: dict[str, Any]) -> int:
        return 1


def test_the_limit_compiles_after_the_flow() -> None:
    assert compile_flow(definition_of(Sync))[-1] == (
        "SELECT pgflow_python.set_concurrency_limit('sync', NULL, 2, ARRAY['customer', 'id']);"
    )
    assert compile_flow(definition_of(Pipeline))[-1] == (
        "SELECT pgflow_python.set_concurrency_limit('pipeline', NULL, 3, NULL);"
    )


def test_a_flow_without_a_limit_compiles_as_before() -> None:
    class Plain(Flow, slug="plain"):
        @step
        def only(self, input: Any) -> None:
            return None

    assert not any("concurrency" in s for s in compile_flow(definition_of(Plain)))


def test_the_definition_round_trips() -> None:
    for flow in (Sync, Pipeline):
        definition = definition_of(flow)
        assert FlowDefinition.from_dict(definition.to_dict()) == definition
    assert definition_of(Sync).to_dict()["concurrency"] == {"limit": 2, "key": ["customer", "id"]}


@pytest.mark.parametrize(
    ("limit", "key", "message"),
    [
        (0, "tenant", "at least 1"),
        (-2, None, "at least 1"),
        (2**31, None, "at most"),
        (1.5, None, "whole number"),
        (True, None, "whole number"),
        (2, "", "key name"),
        (2, "a..b", "key name"),
        (2, "tenant's", "key name"),
        (2, ("a", 3), "key name"),
        (2, (), "key name"),
    ],
)
def test_bad_limits_fail_at_definition(limit: Any, key: Any, message: str) -> None:
    with pytest.raises(FlowDefinitionError, match=message):
        Concurrency(limit, key=key)


def test_a_wrong_value_for_concurrency_is_refused() -> None:
    with pytest.raises(FlowDefinitionError, match=r"Concurrency\(limit"):

        class Wrong(Job, slug="wrong", concurrency=2):  # type: ignore[arg-type]
            def perform(self, input: Any, ctx: Any) -> None:
                return None


class Ranked(Job, slug="ranked", priority=-4):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


def test_a_default_priority_compiles_and_round_trips() -> None:
    assert compile_flow(definition_of(Ranked))[-1] == (
        "SELECT pgflow_python.set_flow_priority('ranked', -4);"
    )
    assert FlowDefinition.from_dict(definition_of(Ranked).to_dict()) == definition_of(Ranked)
    assert not any("priority" in s for s in compile_flow(definition_of(Pipeline)))


class Geocode(
    Job, slug="geocode", rate_limit=RateLimit.named("geo", 2, per=timedelta(seconds=1.5))
):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class PerTenant(Job, slug="per_tenant", rate_limit=RateLimit(60, per=60, key="tenant")):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


def test_a_rate_limit_compiles_and_round_trips() -> None:
    assert compile_flow(definition_of(Geocode))[-1] == (
        "SELECT pgflow_python.set_rate_limit('geocode', NULL, 2, make_interval(secs => 1.5), "
        "NULL, 'geo');"
    )
    assert compile_flow(definition_of(PerTenant))[-1] == (
        "SELECT pgflow_python.set_rate_limit('per_tenant', NULL, 60, "
        "make_interval(secs => 60.0), ARRAY['tenant'], NULL);"
    )
    for job in (Geocode, PerTenant):
        assert FlowDefinition.from_dict(definition_of(job).to_dict()) == definition_of(job)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: RateLimit(0, per=1), "at least 1"),
        (lambda: RateLimit(1, per=0), "positive period"),
        (lambda: RateLimit(1, per=timedelta(days=400)), "at most 366 days"),
        (lambda: RateLimit(1, per=1, key="a..b"), "key name"),
        (lambda: RateLimit.named("", 1, per=1), "name"),
        (lambda: RateLimit.named("-x", 1, per=1), "name"),
        (lambda: RateLimit.from_dict({"limit": 1}), "RateLimit"),
    ],
)
def test_bad_rate_limits(make: Any, message: str) -> None:
    with pytest.raises(FlowDefinitionError, match=message):
        make()


class Enrich(Flow, slug="enrich"):
    @step(concurrency=Concurrency(2, key="tenant"))
    def fetch(self, input: Any) -> list[int]:
        return [1]

    @map_step(array=fetch, rate_limit=RateLimit(5, per=1))
    def call(self, item: int) -> int:
        return item


def test_a_steps_own_limits_compile_and_round_trip() -> None:
    assert compile_flow(definition_of(Enrich))[-2:] == [
        "SELECT pgflow_python.set_concurrency_limit('enrich', 'fetch', 2, ARRAY['tenant']);",
        "SELECT pgflow_python.set_rate_limit('enrich', 'call', 5, make_interval(secs => 1.0), "
        "NULL, NULL);",
    ]
    assert FlowDefinition.from_dict(definition_of(Enrich).to_dict()) == definition_of(Enrich)
    assert definition_of(Enrich).step("fetch").to_dict()["concurrency"] == {
        "limit": 2,
        "key": ["tenant"],
    }


@pytest.mark.parametrize("per", [float("nan"), float("inf"), float("-inf"), 1e20, -1e20])
def test_a_rate_limit_period_out_of_range_is_a_definition_error(per: float) -> None:
    with pytest.raises(FlowDefinitionError, match="at most 366 days"):
        RateLimit(1, per=per)
