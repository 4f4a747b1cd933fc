"""Schedules in autogenerate: ``op.create_schedule``, ``op.update_schedule``, ``op.drop_schedule``.

Declared schedules (``schedule=Cron(...)`` on a registered class) are compared with the
schedules stored in ``pgflow_python.schedules``. A revision carries each schedule as literal
data (``Cron.to_dict()``). Pause state is operational, never part of a revision. A schedule
belongs to its flow (a dropped flow takes its schedules along), so schedules of a flow that a
revision drops are dropped first (and come back in the downgrade), and created after it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext
from alembic.operations import MigrateOperation, Operations
from sqlalchemy.engine import Connection

from alembic_pgflow._ops import DropFlowOp
from alembic_pgflow._registry import FlowRegistry
from alembic_pgflow._render import _call, _flat, _import, literal
from pgflow._sql import query
from pgflow.cron import Cron
from pgflow.schedules import declared_schedule_statement, list_schedules

log = logging.getLogger("alembic.autogenerate.pgflow")

ScheduleData = Mapping[str, Any]


def _plain(definition: ScheduleData | Cron) -> dict[str, Any]:
    """Validated literal data (a bad revision fails here with the schedule's own message)."""
    cron = definition if isinstance(definition, Cron) else Cron.from_dict(definition)
    if cron.name is None or cron.flow_slug is None:
        raise ValueError(f"a schedule in a revision needs a name and a flow_slug, got {definition}")
    return cron.to_dict()


@Operations.register_operation("create_schedule")
class CreateScheduleOp(MigrateOperation):
    """Create (or replace) a declared schedule from its data; its flow must exist."""

    def __init__(self, definition: ScheduleData | Cron) -> None:
        self.definition = _plain(definition)

    @property
    def name(self) -> str:
        return str(self.definition["name"])

    @classmethod
    def create_schedule(cls, operations: Operations, definition: ScheduleData) -> None:
        """Create the schedule described by ``definition`` (the data of ``Cron.to_dict``)."""
        operations.invoke(cls(definition))

    def reverse(self) -> DropScheduleOp:
        return DropScheduleOp(self.name, definition=self.definition)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("add_schedule", self.name)


@Operations.register_operation("update_schedule")
class UpdateScheduleOp(MigrateOperation):
    """Replace a schedule's definition (expression, input, time zone, policy)."""

    def __init__(
        self, definition: ScheduleData | Cron, *, previous: ScheduleData | Cron | None = None
    ) -> None:
        self.definition = _plain(definition)
        self.previous = None if previous is None else _plain(previous)

    @property
    def name(self) -> str:
        return str(self.definition["name"])

    @classmethod
    def update_schedule(cls, operations: Operations, definition: ScheduleData) -> None:
        """Give schedule ``definition["name"]`` the definition ``definition``."""
        operations.invoke(cls(definition))

    def reverse(self) -> UpdateScheduleOp:
        if self.previous is None:
            raise ValueError(f"update_schedule({self.name!r}) without previous values")
        return UpdateScheduleOp(self.previous, previous=self.definition)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("modify_schedule", self.name, self.definition)


@Operations.register_operation("drop_schedule")
class DropScheduleOp(MigrateOperation):
    """Delete a schedule and its fire records (the runs it started stay)."""

    def __init__(
        self,
        name: str,
        *,
        definition: ScheduleData | Cron | None = None,
        reason: str | None = None,
    ) -> None:
        self.name = name
        self.definition = None if definition is None else _plain(definition)
        self.reason = reason

    @classmethod
    def drop_schedule(cls, operations: Operations, name: str) -> None:
        """Delete schedule ``name``."""
        operations.invoke(cls(name))

    def reverse(self) -> CreateScheduleOp:
        if self.definition is None:
            raise ValueError(f"drop_schedule({self.name!r}) without a definition")
        return CreateScheduleOp(self.definition)

    def to_diff_tuple(self) -> tuple[Any, ...]:
        return ("remove_schedule", self.name)


def _put(operations: Operations, definition: ScheduleData) -> None:
    operations.execute(declared_schedule_statement(Cron.from_dict(definition)))


@Operations.implementation_for(CreateScheduleOp)
def _create_schedule(operations: Operations, operation: CreateScheduleOp) -> None:
    _put(operations, operation.definition)


@Operations.implementation_for(UpdateScheduleOp)
def _update_schedule(operations: Operations, operation: UpdateScheduleOp) -> None:
    _put(operations, operation.definition)


@Operations.implementation_for(DropScheduleOp)
def _drop_schedule(operations: Operations, operation: DropScheduleOp) -> None:
    operations.execute(query("schedules_delete").bindparams(name=operation.name))


@renderers.dispatch_for(CreateScheduleOp)
def _render_create(autogen_context: AutogenContext, op: CreateScheduleOp) -> str:
    _import(autogen_context)
    return _call("create_schedule", [literal(op.definition, 1)])


@renderers.dispatch_for(UpdateScheduleOp)
def _render_update(autogen_context: AutogenContext, op: UpdateScheduleOp) -> str:
    _import(autogen_context)
    return _call("update_schedule", [literal(op.definition, 1)])


@renderers.dispatch_for(DropScheduleOp)
def _render_drop(autogen_context: AutogenContext, op: DropScheduleOp) -> str:
    _import(autogen_context)
    call = _call("drop_schedule", [_flat(op.name)])
    return f"# {op.reason}\n{call}" if op.reason else call


def read_schedules(connection: Connection) -> dict[str, tuple[Cron, bool]]:
    """Stored schedules by name, with whether each was declared; empty without the table."""
    if not connection.execute(query("schedules_table_present")).scalar_one():
        return {}
    return {s.name: (s.cron, s.declared) for s in list_schedules(connection)}


def plan_schedule_operations(
    registry: FlowRegistry,
    stored: Mapping[str, tuple[Cron, bool]],
    flow_operations: list[MigrateOperation],
) -> tuple[list[MigrateOperation], list[MigrateOperation]]:
    """``(before, after)`` the flow operations: drops first, creates and updates last."""
    dropped_flows = {op.flow_slug for op in flow_operations if isinstance(op, DropFlowOp)}
    before: list[MigrateOperation] = []
    after: list[MigrateOperation] = []
    for name, (cron, _declared) in stored.items():
        if cron.flow_slug in dropped_flows:
            before.append(
                DropScheduleOp(
                    name,
                    definition=cron,
                    reason=f"flow {cron.flow_slug!r} is dropped below, and its schedules with it",
                )
            )
    for name, (cron, origin) in registry.schedules.items():
        current = stored.get(name)
        if current is None or current[0].flow_slug in dropped_flows:
            log.info("Detected new schedule %r (%s)", name, origin)
            after.append(CreateScheduleOp(cron))
        elif current[0].compared() != cron.compared() or not current[1]:
            log.info("Detected changed schedule %r (%s)", name, origin)
            after.append(UpdateScheduleOp(cron, previous=current[0]))
    for name, (cron, declared) in sorted(stored.items()):
        if name in registry.schedules or not declared or cron.flow_slug in dropped_flows:
            continue
        if cron.flow_slug in registry.flows:
            log.info("Detected removed schedule %r", name)
            before.append(
                DropScheduleOp(
                    name,
                    definition=cron,
                    reason=f"flow {cron.flow_slug!r} no longer declares schedule {name!r}",
                )
            )
        else:
            log.warning(
                "schedule %r of flow %r is declared nowhere registered with include_flows(); "
                "left as is",
                name,
                cron.flow_slug,
            )
    return before, after
