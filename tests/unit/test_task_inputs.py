"""Upstream task input -> handler input, for both upstream record shapes (0.8.1 and 0.14)."""

from __future__ import annotations

from pgflow.definition import StepDefinition, StepType
from pgflow.worker._inputs import flow_input, handler_input

ROOT = StepDefinition("fetch")
DEPENDENT = StepDefinition("join", depends_on=("a", "b"))
MAP = StepDefinition("each", StepType.MAP, ("fetch",))


def test_upstream_081_records() -> None:
    root = {"input": {"run": {"url": "x"}}}
    dependent = {"input": {"run": {"url": "x"}, "a": 1, "b": [2]}}
    element = {"input": {"n": 3}}
    assert handler_input(ROOT, root) == {"url": "x"}
    assert handler_input(DEPENDENT, dependent) == {"a": 1, "b": [2]}
    assert handler_input(MAP, element) == {"n": 3}
    assert flow_input(root) == {"url": "x"}
    assert flow_input(element) is None  # a map task does not carry it: loaded on demand


def test_upstream_014_records_with_a_flow_input_column() -> None:
    root = {"input": {}, "flow_input": {"url": "x"}}
    dependent = {"input": {"a": 0, "b": False}, "flow_input": {"url": "x"}}
    element = {"input": "", "flow_input": ["", "y"]}
    assert handler_input(ROOT, root) == {"url": "x"}
    assert handler_input(DEPENDENT, dependent) == {"a": 0, "b": False}
    assert handler_input(MAP, element) == ""
    assert flow_input(element) == ["", "y"]
