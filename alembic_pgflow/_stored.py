"""Flow definitions as the database holds them (pgflow.flows, steps, deps), and their runs.

Read into plain records rather than ``FlowDefinition`` objects: a database may hold flows that
our validation would reject (compiled by other tooling, or with no steps yet), and the
comparator must still be able to describe and drop them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from pgflow._sql import query
from pgflow.definition import CONDITION_OPTIONS, FLOW_OPTIONS, STEP_OPTIONS, FlowType, StepType


@dataclass(frozen=True)
class StoredStep:
    slug: str
    step_type: StepType
    depends_on: tuple[str, ...]
    options: Mapping[str, int | None]
    condition: Mapping[str, Any] = field(default_factory=dict)
    """Condition options as stored (``CONDITION_OPTIONS``); empty for a step without any."""
    wait: Mapping[str, Any] = field(default_factory=dict)
    """``wait``, ``wait_timeout``, ``on_timeout`` of a wait step; empty for other steps."""
    subflow: str | None = None
    """The flow a subflow step runs (extension/0073); None for other steps."""
    flow_control: Mapping[str, Any] = field(default_factory=dict)
    """The step's own ``concurrency`` / ``rate_limit`` as ``to_dict`` forms, where set."""


@dataclass(frozen=True)
class StoredFlow:
    slug: str
    flow_type: FlowType
    options: Mapping[str, int]
    steps: tuple[StoredStep, ...]
    runs: int = 0
    started_runs: int = 0
    concurrency: Mapping[str, Any] | None = None
    """The flow's concurrency limit as ``Concurrency.to_dict`` (extension/0080); None: none."""
    run_timeout: int | None = None
    priority: int | None = None
    """The flow's default priority (extension/0081); None: none."""
    rate_limit: Mapping[str, Any] | None = None
    """The flow's rate limit as ``RateLimit.to_dict`` (extension/0082); None: none."""

    def to_dict(self) -> dict[str, Any]:
        """The same plain data as ``FlowDefinition.to_dict`` (options at their stored values)."""
        data: dict[str, Any] = {"slug": self.slug}
        if self.flow_type is not FlowType.FLOW:
            data["flow_type"] = str(self.flow_type)
        data.update(self.options)
        if self.concurrency is not None:
            data["concurrency"] = dict(self.concurrency)
        if self.run_timeout is not None:
            data["run_timeout"] = self.run_timeout
        if self.priority is not None:
            data["priority"] = self.priority
        if self.rate_limit is not None:
            data["rate_limit"] = dict(self.rate_limit)
        steps = []
        for step in self.steps:
            item: dict[str, Any] = {"slug": step.slug}
            if step.step_type is not StepType.SINGLE:
                item["step_type"] = str(step.step_type)
            if step.depends_on:
                item["depends_on"] = list(step.depends_on)
            item.update({k: v for k, v in step.options.items() if v is not None})
            item.update({k: v for k, v in step.condition.items() if v is not None})
            item.update({k: v for k, v in step.wait.items() if v is not None})
            if step.subflow is not None:
                item["subflow"] = step.subflow
            item.update({k: dict(v) for k, v in step.flow_control.items()})
            steps.append(item)
        data["steps"] = steps
        return data

    def describe_runs(self) -> str:
        if not self.runs:
            return "it has no runs"
        return f"it has {self.runs} runs ({self.started_runs} still started)"


def read_flows(connection: Connection) -> dict[str, StoredFlow]:
    """Every flow in the database by slug; empty when the pgflow schema is not installed."""
    if not connection.execute(query("flows_table_present")).scalar_one():
        return {}
    deps: dict[tuple[str, str], list[str]] = {}
    for row in connection.execute(query("stored_deps")).mappings():
        deps.setdefault((row["flow_slug"], row["step_slug"]), []).append(row["dep_slug"])
    conditions: dict[tuple[str, str], dict[str, Any]] = {}
    if connection.execute(query("step_conditions_present")).scalar_one():
        for row in connection.execute(query("stored_conditions")).mappings():
            conditions[(row["flow_slug"], row["step_slug"])] = {
                name: row[name] for name in CONDITION_OPTIONS
            }
    waits: dict[tuple[str, str], dict[str, Any]] = {}
    run_timeouts: dict[str, int] = {}
    if connection.execute(query("waits_present")).scalar_one():
        for row in connection.execute(query("stored_wait_steps")).mappings():
            waits[(row["flow_slug"], row["step_slug"])] = {
                name: row[name] for name in ("wait", "wait_timeout", "on_timeout")
            }
        for row in connection.execute(query("stored_run_timeouts")).mappings():
            run_timeouts[row["flow_slug"]] = row["run_timeout"]
    subflows: dict[tuple[str, str], str] = {}
    if connection.execute(query("subflows_present")).scalar_one():
        for row in connection.execute(query("stored_subflow_steps")).mappings():
            subflows[(row["flow_slug"], row["step_slug"])] = row["subflow"]
    step_limits = _step_limits(connection)
    steps: dict[str, list[StoredStep]] = {}
    for row in connection.execute(query("stored_steps")).mappings():
        steps.setdefault(row["flow_slug"], []).append(
            StoredStep(
                slug=row["step_slug"],
                step_type=StepType(row["step_type"]),
                depends_on=tuple(deps.get((row["flow_slug"], row["step_slug"]), ())),
                options={name: row[name] for name in STEP_OPTIONS},
                condition=conditions.get((row["flow_slug"], row["step_slug"]), {}),
                wait=waits.get((row["flow_slug"], row["step_slug"]), {}),
                subflow=subflows.get((row["flow_slug"], row["step_slug"])),
                flow_control=step_limits.get((row["flow_slug"], row["step_slug"]), {}),
            )
        )
    limits = _per_flow(connection, "concurrency_limits_present", "stored_concurrency")
    priorities = _per_flow(connection, "flow_priorities_present", "stored_priorities")
    rates = _per_flow(connection, "rate_limits_present", "stored_rate_limits")
    runs = {row["flow_slug"]: row for row in connection.execute(query("run_counts")).mappings()}
    flows = {}
    for row in connection.execute(query("stored_flows")).mappings():
        slug = row["flow_slug"]
        counts = runs.get(slug)
        flows[slug] = StoredFlow(
            slug=slug,
            flow_type=FlowType(row["flow_type"]),
            options={name: row[name] for name in FLOW_OPTIONS},
            steps=tuple(steps.get(slug, ())),
            runs=counts["runs"] if counts else 0,
            started_runs=counts["started"] if counts else 0,
            concurrency=limits.get(slug),
            run_timeout=run_timeouts.get(slug),
            priority=priorities.get(slug),
            rate_limit=rates.get(slug),
        )
    return flows


def _per_flow(connection: Connection, present: str, stored: str) -> dict[str, Any]:
    """A flow option kept in a table of ours (flow control), by flow; none when the table is
    not there (an older schema): the query's second column."""
    if not connection.execute(query(present)).scalar_one():
        return {}
    return {row[0]: row[1] for row in connection.execute(query(stored))}


def _step_limits(connection: Connection) -> dict[tuple[str, str], dict[str, Any]]:
    """Steps' own limits (extension/0080, 0082) by (flow, step); none on an older schema."""
    present = ("concurrency_limits_present", "rate_limits_present")
    if not all(connection.execute(query(name)).scalar_one() for name in present):
        return {}
    return {
        (row["flow_slug"], row["step_slug"]): {
            name: row[name] for name in ("concurrency", "rate_limit") if row[name] is not None
        }
        for row in connection.execute(query("stored_step_limits")).mappings()
    }
