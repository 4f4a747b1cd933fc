"""Turn upstream's task input into what a handler receives (the flow input for a root step,
``{dep_slug: output}`` for a dependent one, one element for a map task).

@pgflow/core 0.8.1 gives a root step ``{"run": flow_input}`` and a dependent step
``{"run": flow_input, dep: output, ...}``; 0.14 gives a root step ``{}`` plus a ``flow_input``
column and a dependent step only its dependencies. A map task gets its element in both. The
version is recognised from the claim record's columns, never from a version string.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pgflow.definition import StepDefinition, StepType


def handler_input(step: StepDefinition, record: Mapping[str, Any]) -> Any:
    task_input = record["input"]
    if step.step_type is StepType.MAP:
        return task_input
    if not step.depends_on:
        return record["flow_input"] if "flow_input" in record else task_input["run"]
    # A skipped dependency (conditions, extension/0061) is absent from the claim's input.
    return {dep: task_input[dep] for dep in step.depends_on if dep in task_input}


def flow_input(record: Mapping[str, Any]) -> Any:
    """The run's input when the record carries it (root steps of 0.8.1, every task of 0.14)."""
    if "flow_input" in record:
        return record["flow_input"]
    task_input = record["input"]
    if isinstance(task_input, dict) and "run" in task_input:
        return task_input["run"]
    return None
