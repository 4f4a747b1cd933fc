"""Migration operations on flows: ``op.create_flow``, ``op.update_flow_options``, ``op.drop_flow``.

A revision carries each flow as literal data (``FlowDefinition.to_dict()``), never as an import
of application code, so it still runs after the flow class is renamed or deleted. Every
operation is plain SQL, so offline mode (``alembic upgrade --sql``) works too; online, the
operations also check the database first to fail with a clear message rather than a SQL error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from alembic.operations import MigrateOperation, Operations
from sqlalchemy.engine import Connection

from alembic_pgflow._diff import diff_flow
from alembic_pgflow._stored import read_flows
from alembic_pgflow.errors import FlowConflictError, FlowHasRunsError
from pgflow._registered import create_flow_defaults
from pgflow._sql import query
from pgflow.compiler import compile_flow
from pgflow.definition import (
    CONDITION_OPTIONS,
    FLOW_OPTIONS,
    STEP_OPTIONS,
    FlowDefinition,
    FlowType,
)
from pgflow.flow_control import Concurrency, RateLimit, checked_priority

FlowData = Mapping[str, Any]
StepOptions = Mapping[str, Mapping[str, Any]]
_FLOW_KEYS = (
    *FLOW_OPTIONS,
    "flow_type",
    "concurrency",
    "run_timeout",
    "priority",
    "rate_limit",
)
_WAIT = ("wait_timeout", "on_timeout")  # a wait step's options (extension/0070)
_STEP_LIMITS = ("concurrency", "rate_limit")  # a step's own limits (extension/0080, 0082)


def _plain(definition: FlowData | FlowDefinition) -> dict[str, Any]:
    data = definition.to_dict() if isinstance(definition, FlowDefinition) else dict(definition)
    if not isinstance(data.get("slug"), str):
        raise TypeError(f"a flow definition needs a 'slug', got {data!r}")
    return data


def _check_keys(flow: FlowData, steps: StepOptions) -> None:
    unknown = sorted(set(flow) - set(_FLOW_KEYS))
    if unknown:
        raise ValueError(f"unknown flow options {unknown}; known: {list(_FLOW_KEYS)}")
    for step, options in steps.items():
        known = (*STEP_OPTIONS, *CONDITION_OPTIONS, *_WAIT, *_STEP_LIMITS)
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(f"step {step!r}: unknown options {unknown}; known: {known}")


@Operations.register_operation("create_flow")
class CreateFlowOp(MigrateOperation):
    """Create a flow (its row, steps, dependencies and pgmq queue) from its definition data."""

    def __init__(
        self, definition: FlowData | FlowDefinition, *, delete_runs_on_downgrade: bool = False
    ) -> None:
        self.definition = _plain(definition)
        self.delete_runs_on_downgrade = delete_runs_on_downgrade

    @property
    def flow_slug(self) -> str:
        return str(self.definition["slug"])

    @classmethod
    def create_flow(cls, operations: Operations, definition: FlowData | FlowDefinition) -> None:
        """Create the flow described by ``definition`` (the data of ``FlowDefinition.to_dict``)."""
        operations.invoke(cls(definition))

    def reverse(self) -> DropFlowOp:
        return DropFlowOp(
            self.flow_slug, delete_runs=self.delete_runs_on_downgrade, definition=self.definition
        )

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("add_flow", self.flow_slug)


@Operations.register_operation("drop_flow")
class DropFlowOp(MigrateOperation):
    """Delete a flow and its queue; refuses while it has runs unless ``delete_runs`` is True."""

    def __init__(
        self,
        flow_slug: str,
        *,
        delete_runs: bool = False,
        definition: FlowData | None = None,
        reason: str | None = None,
    ) -> None:
        self.flow_slug = flow_slug
        self.delete_runs = delete_runs
        self.definition = None if definition is None else _plain(definition)
        self.reason = reason
        """Why autogenerate drops the flow; rendered as a comment above the call."""

    @classmethod
    def drop_flow(
        cls, operations: Operations, flow_slug: str, *, delete_runs: bool = False
    ) -> None:
        """Delete flow ``flow_slug``; with ``delete_runs=True`` also when it has runs."""
        operations.invoke(cls(flow_slug, delete_runs=delete_runs))

    def reverse(self) -> CreateFlowOp:
        if self.definition is None:
            raise ValueError(
                f"drop_flow({self.flow_slug!r}) without a definition cannot be reversed"
            )
        return CreateFlowOp(self.definition, delete_runs_on_downgrade=self.delete_runs)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("remove_flow", self.flow_slug)


@Operations.register_operation("update_flow_options")
class UpdateFlowOptionsOp(MigrateOperation):
    """Set flow options (None: create_flow's default) and step options (None: inherit)."""

    def __init__(
        self,
        flow_slug: str,
        *,
        flow: FlowData | None = None,
        steps: StepOptions | None = None,
        previous_flow: FlowData | None = None,
        previous_steps: StepOptions | None = None,
    ) -> None:
        self.flow_slug = flow_slug
        self.flow = dict(flow or {})
        self.steps = {step: dict(options) for step, options in (steps or {}).items()}
        _check_keys(self.flow, self.steps)
        self.previous_flow = None if previous_flow is None else dict(previous_flow)
        self.previous_steps = (
            None if previous_steps is None else {s: dict(o) for s, o in previous_steps.items()}
        )

    @classmethod
    def update_flow_options(
        cls,
        operations: Operations,
        flow_slug: str,
        *,
        flow: FlowData | None = None,
        steps: StepOptions | None = None,
    ) -> None:
        """Change options of flow ``flow_slug`` and of its ``steps`` ({step: {option: value}})."""
        operations.invoke(cls(flow_slug, flow=flow, steps=steps))

    def reverse(self) -> UpdateFlowOptionsOp:
        if self.previous_flow is None or self.previous_steps is None:
            raise ValueError(
                f"update_flow_options({self.flow_slug!r}) without previous values "
                "cannot be reversed"
            )
        return UpdateFlowOptionsOp(
            self.flow_slug,
            flow=self.previous_flow,
            steps=self.previous_steps,
            previous_flow=self.flow,
            previous_steps=self.steps,
        )

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("modify_flow_options", self.flow_slug, self.flow, self.steps)


def _connection(operations: Operations) -> Connection | None:
    """The live connection, or None in offline (``--sql``) mode."""
    if operations.migration_context.as_sql:
        return None
    return operations.get_bind()


@Operations.implementation_for(CreateFlowOp)
def _create_flow(operations: Operations, operation: CreateFlowOp) -> None:
    definition = FlowDefinition.from_dict(operation.definition)
    connection = _connection(operations)
    if connection is not None:
        stored = read_flows(connection).get(definition.slug)
        if stored is not None:
            diff = diff_flow(definition, stored, create_flow_defaults(connection))
            if not diff.shape and not diff.options_changed:
                return  # already there, identical (e.g. compiled by other tooling): adopt it
            raise FlowConflictError(
                f"cannot create flow {definition.slug!r}: the database already has a flow with "
                "that slug and a different definition (upstream's create_flow would silently "
                "keep the old one). Drop it first (op.drop_flow) or give the new flow a new slug."
            )
    for statement in compile_flow(definition):
        operations.execute(statement)


@Operations.implementation_for(DropFlowOp)
def _drop_flow(operations: Operations, operation: DropFlowOp) -> None:
    slug = operation.flow_slug
    connection = _connection(operations)
    if connection is not None:
        stored = read_flows(connection).get(slug)
        if stored is None:
            raise FlowConflictError(f"cannot drop flow {slug!r}: the database has no such flow")
        if stored.runs and not operation.delete_runs:
            raise FlowHasRunsError(
                f"cannot drop flow {slug!r}: {stored.describe_runs()}, and dropping a flow "
                "deletes its runs. If losing them is intended, edit the revision to call "
                f'op.drop_flow("{slug}", delete_runs=True); otherwise keep this revision applied.'
            )
    operations.execute(
        query("delete_flow").bindparams(flow_slug=slug, delete_runs=operation.delete_runs)
    )


@Operations.implementation_for(UpdateFlowOptionsOp)
def _update_flow_options(operations: Operations, operation: UpdateFlowOptionsOp) -> None:
    slug = operation.flow_slug
    connection = _connection(operations)
    if connection is not None and slug not in read_flows(connection):
        raise FlowConflictError(f"cannot update flow {slug!r}: the database has no such flow")
    flow_options = dict(operation.flow)
    if "concurrency" in flow_options:
        _set_concurrency(operations, slug, flow_options.pop("concurrency"))
    if "rate_limit" in flow_options:
        _set_rate_limit(operations, slug, flow_options.pop("rate_limit"))
    if "priority" in flow_options:
        priority = flow_options.pop("priority")
        if priority is not None:
            checked_priority(priority, f"flow {slug!r}")
        operations.execute(query("set_flow_priority").bindparams(flow_slug=slug, priority=priority))
    if "run_timeout" in flow_options:
        operations.execute(
            query("set_flow_run_timeout").bindparams(
                flow_slug=slug, run_timeout=flow_options.pop("run_timeout")
            )
        )
    if flow_options:
        flow_type = flow_options.get("flow_type")
        if flow_type is not None:
            FlowType(flow_type)  # a clear ValueError before SQL's check constraint
        operations.execute(
            query("set_flow_options").bindparams(
                flow_slug=slug, options=json.dumps(flow_options, sort_keys=True)
            )
        )
    for step, options in operation.steps.items():
        _set_step_limits(operations, slug, step, options)
        plain = {
            k: v
            for k, v in options.items()
            if k not in CONDITION_OPTIONS and k not in _WAIT and k not in _STEP_LIMITS
        }
        condition = {k: v for k, v in options.items() if k in CONDITION_OPTIONS}
        wait = {k: v for k, v in options.items() if k in _WAIT}
        if wait:
            operations.execute(
                query("set_wait_step_options").bindparams(
                    flow_slug=slug, step_slug=step, options=json.dumps(wait, sort_keys=True)
                )
            )
        if plain:
            operations.execute(
                query("set_step_options").bindparams(
                    flow_slug=slug, step_slug=step, options=json.dumps(plain, sort_keys=True)
                )
            )
        if condition:
            operations.execute(
                query("set_step_condition_options").bindparams(
                    flow_slug=slug, step_slug=step, options=json.dumps(condition, sort_keys=True)
                )
            )


def _set_step_limits(
    operations: Operations, slug: str, step: str, options: Mapping[str, Any]
) -> None:
    """A step's own limits in ``op.update_flow_options(slug, steps={step: {...}})``."""
    if "concurrency" in options:
        _set_concurrency(operations, slug, options["concurrency"], step)
    if "rate_limit" in options:
        _set_rate_limit(operations, slug, options["rate_limit"], step)


def _set_rate_limit(
    operations: Operations, slug: str, wanted: Any, step: str | None = None
) -> None:
    """``op.update_flow_options(slug, flow={"rate_limit": {...} or None})`` (extension/0082)."""
    limit = None if wanted is None else RateLimit.from_dict(wanted)
    operations.execute(
        query("set_rate_limit").bindparams(
            flow_slug=slug,
            step_slug=step,
            max_starts=None if limit is None else limit.limit,
            seconds=None if limit is None else limit.seconds,
            key_path=None if limit is None or not limit.key_path else list(limit.key_path),
            name=None if limit is None else limit.name,
        )
    )


def _set_concurrency(
    operations: Operations, slug: str, wanted: Any, step: str | None = None
) -> None:
    """``op.update_flow_options(slug, flow={"concurrency": {...} or None})``: validated as the
    DSL validates it, then set (or removed) at once (extension/0080)."""
    limit = None if wanted is None else Concurrency.from_dict(wanted)
    operations.execute(
        query("set_concurrency_limit").bindparams(
            flow_slug=slug,
            step_slug=step,
            max_running=None if limit is None else limit.limit,
            key_path=None if limit is None or not limit.key_path else list(limit.key_path),
        )
    )
