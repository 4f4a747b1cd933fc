"""Compare a flow definition with the flow stored in the database: shape, then options.

Shape (steps, their order and types, dependencies) cannot change in place: runs in flight
reference the old steps. Options (conditions included) and the flow type can. Dependencies
compare as sets, since the database keeps no order among a step's dependencies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alembic_pgflow._stored import StoredFlow
from pgflow._shape import StepShape, shape_changes, shape_of
from pgflow.definition import (
    CONDITION_DEFAULTS,
    CONDITION_OPTIONS,
    FLOW_OPTIONS,
    STEP_OPTIONS,
    FlowDefinition,
)

Change = tuple[Any, Any]
"""(value in the database, value in the code)"""


@dataclass(frozen=True)
class FlowDiff:
    shape: tuple[str, ...] = ()
    """Human-readable shape changes; any of them means the flow cannot be updated in place."""
    flow: Mapping[str, Change] = field(default_factory=dict)
    steps: Mapping[str, Mapping[str, Change]] = field(default_factory=dict)

    @property
    def options_changed(self) -> bool:
        return bool(self.flow or self.steps)


def diff_flow(
    definition: FlowDefinition, stored: StoredFlow, flow_defaults: Mapping[str, int]
) -> FlowDiff:
    shape = _shape_changes(definition, stored)
    if shape:
        return FlowDiff(shape=tuple(shape))
    flow: dict[str, Change] = {}
    for name in FLOW_OPTIONS:
        wanted = definition.options[name]
        effective = flow_defaults[name] if wanted is None else wanted
        if stored.options[name] != effective:
            flow[name] = (stored.options[name], wanted)
    if stored.flow_type != definition.flow_type:
        flow["flow_type"] = (str(stored.flow_type), str(definition.flow_type))
    # A concurrency limit is an option too (docs/flow-control.md): it takes effect at once.
    wanted_limit = None if definition.concurrency is None else definition.concurrency.to_dict()
    if stored.concurrency != wanted_limit:
        flow["concurrency"] = (stored.concurrency, wanted_limit)
    steps: dict[str, dict[str, Change]] = {}
    for stored_step in stored.steps:
        options = definition.step(stored_step.slug).options
        for name in STEP_OPTIONS:
            if stored_step.options[name] != options[name]:
                steps.setdefault(stored_step.slug, {})[name] = (
                    stored_step.options[name],
                    options[name],
                )
        # Conditions are options too (docs/alembic.md): they change no step, type or
        # dependency, and apply to steps that become ready after the change.
        condition = definition.step(stored_step.slug).condition
        for name in CONDITION_OPTIONS:
            old, new = stored_step.condition.get(name), condition[name]
            default = CONDITION_DEFAULTS.get(name)
            if (default if old is None else old) != (default if new is None else new):
                steps.setdefault(stored_step.slug, {})[name] = (old, new)
    return FlowDiff(flow=flow, steps=steps)


def _shape_changes(definition: FlowDefinition, stored: StoredFlow) -> list[str]:
    database = tuple(StepShape.of(s.slug, s.step_type, s.depends_on) for s in stored.steps)
    return shape_changes(database, shape_of(definition))
