"""Compare a flow definition with the flow stored in the database: shape, then options.

Shape (steps, their order and types, dependencies) cannot change in place: runs in flight
reference the old steps. Options (conditions included) and the flow type can. Dependencies
compare as sets, since the database keeps no order among a step's dependencies.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from alembic_pgflow._stored import StoredFlow, StoredStep
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
    flow.update(_flow_control_changes(definition, stored))
    if stored.run_timeout != definition.run_timeout:
        flow["run_timeout"] = (stored.run_timeout, definition.run_timeout)
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
        limits = _step_limit_changes(definition, stored_step)
        if limits:
            steps.setdefault(stored_step.slug, {}).update(limits)
        waits = _wait_changes(definition, stored_step)
        if waits:
            steps.setdefault(stored_step.slug, {}).update(waits)
    return FlowDiff(flow=flow, steps=steps)


def _flow_control_changes(definition: FlowDefinition, stored: StoredFlow) -> dict[str, Change]:
    """Limits and priorities are options too (docs/flow-control.md): they take effect at once."""
    changes: dict[str, Change] = {}
    wanted_limit = None if definition.concurrency is None else definition.concurrency.to_dict()
    if stored.concurrency != wanted_limit:
        changes["concurrency"] = (stored.concurrency, wanted_limit)
    if stored.priority != definition.priority:
        changes["priority"] = (stored.priority, definition.priority)
    wanted_rate = None if definition.rate_limit is None else definition.rate_limit.to_dict()
    if stored.rate_limit != wanted_rate:
        changes["rate_limit"] = (stored.rate_limit, wanted_rate)
    return changes


def _step_limit_changes(definition: FlowDefinition, stored_step: StoredStep) -> dict[str, Change]:
    """A step's own limits are options (docs/flow-control.md)."""
    target = definition.step(stored_step.slug)
    changes: dict[str, Change] = {}
    for name, value in (("concurrency", target.concurrency), ("rate_limit", target.rate_limit)):
        wanted = None if value is None else value.to_dict()
        old = stored_step.flow_control.get(name)
        if (None if old is None else dict(old)) != wanted:
            changes[name] = (old, wanted)
    return changes


def _wait_changes(definition: FlowDefinition, stored_step: StoredStep) -> dict[str, Change]:
    """A wait step's timeout and on_timeout are options (they apply to waits that start
    afterwards); whether a step waits at all is shape (``_shape_changes``)."""
    target = definition.step(stored_step.slug)
    if not (stored_step.wait and target.wait):
        return {}
    wanted = {"wait_timeout": target.wait_timeout, "on_timeout": str(target.on_timeout or "fail")}
    return {
        name: (stored_step.wait.get(name), new)
        for name, new in wanted.items()
        if stored_step.wait.get(name) != new
    }


def _shape_changes(definition: FlowDefinition, stored: StoredFlow) -> list[str]:
    database = tuple(StepShape.of(s.slug, s.step_type, s.depends_on) for s in stored.steps)
    changes = shape_changes(database, shape_of(definition))
    if changes:
        return changes
    for step in stored.steps:
        waits, will_wait = bool(step.wait), definition.step(step.slug).wait is not None
        if waits != will_wait:
            # Runs in flight have tasks (or waits) of the other kind.
            changes.append(
                f"step {step.slug!r} "
                + ("no longer waits for a signal" if waits else "becomes a wait step")
            )
        child = definition.step(step.slug).subflow
        if step.subflow != child:
            # Runs in flight wait for children of the old flow, or have tasks of the old kind.
            changes.append(
                f"step {step.slug!r} "
                + (
                    f"becomes a subflow step running {child!r}"
                    if step.subflow is None
                    else f"no longer runs subflow {step.subflow!r}"
                    if child is None
                    else f"runs subflow {child!r} instead of {step.subflow!r}"
                )
            )
    return changes
