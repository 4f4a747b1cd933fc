"""docs/starting-flows.md's table of calls names every parameter of each call, with its default,
as the code has it (a parameter added to the code and not to the table fails here)."""

from __future__ import annotations

import ast
import inspect
import re
from typing import Any

import pgflow.client
from tests.helpers.docs import DOCS

ROW = re.compile(r"^\| `(\w+)\((.*)\)(?: -> [^`]+)?` \|", re.MULTILINE)


def documented_calls() -> dict[str, list[tuple[str, Any]]]:
    """``{name: [(parameter, default or inspect.Parameter.empty), ...]}`` from the table."""
    calls = {}
    for name, parameters in ROW.findall((DOCS / "starting-flows.md").read_text()):
        listed = []
        for part in (p.strip() for p in parameters.split(",")):
            if part == "*":
                continue
            parameter, _, default = part.partition("=")
            value = ast.literal_eval(default) if default else inspect.Parameter.empty
            listed.append((parameter, value))
        calls[name] = listed
    return calls


def test_the_table_lists_each_call_with_every_parameter_and_default() -> None:
    calls = documented_calls()
    assert {"start_flow", "enqueue", "wait_for_run", "start_flow_and_wait"} <= set(calls)
    for name, listed in calls.items():
        signature = inspect.signature(getattr(pgflow.client, name))
        actual = [(p.name, p.default) for p in signature.parameters.values()]
        assert listed == actual, f"docs/starting-flows.md: {name}"
