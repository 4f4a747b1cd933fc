"""Schedules declared on Flow/Job classes (``schedule=Cron(...)``), checked at class creation."""

from __future__ import annotations

from collections.abc import Sequence

from pgflow.definition import FlowDefinition, StepType
from pgflow.errors import InvalidScheduleError
from pgflow.schedules._cron import Cron

ScheduleDeclaration = Cron | Sequence[Cron] | None


def bind_declared(
    owner: str, definition: FlowDefinition, declaration: ScheduleDeclaration
) -> tuple[Cron, ...]:
    """The class's schedules bound to its flow; a clear error for anything pgflow would refuse."""
    if declaration is None:
        return ()
    crons = [declaration] if isinstance(declaration, Cron) else list(declaration)
    for cron in crons:
        if not isinstance(cron, Cron):
            raise InvalidScheduleError(
                f"{owner}: schedule= takes Cron(...) or a list of them, got {cron!r}"
            )
    if len(crons) > 1 and any(cron.name is None for cron in crons):
        raise InvalidScheduleError(
            f"{owner} declares {len(crons)} schedules: give each a name=... (unique over the "
            "database), e.g. Cron('0 3 * * *', name='nightly')"
        )
    root_map = next(
        (s.slug for s in definition.steps if s.step_type is StepType.MAP and not s.depends_on),
        None,
    )
    bound: list[Cron] = []
    for cron in crons:
        schedule = cron.bound(definition.slug, default_name=definition.slug)
        if root_map is not None and not isinstance(schedule.input, list):
            raise InvalidScheduleError(
                f"{owner}: schedule {schedule.name!r} starts flow {definition.slug!r}, which maps "
                f"over its input in step {root_map!r}, so its input must be a list"
            )
        if schedule.name in {b.name for b in bound}:
            raise InvalidScheduleError(f"{owner} declares schedule {schedule.name!r} twice")
        bound.append(schedule)
    return tuple(bound)


def schedules_of(flow_class: type) -> tuple[Cron, ...]:
    """The schedules declared on a concrete Flow/Job class (bound to its slug)."""
    found = vars(flow_class).get("__pgflow_schedules__", ())
    return tuple(found)
