"""A flow's shape: its steps in order, their types, and their dependencies as sets.

The shape is what cannot change under runs in flight, so both the worker's start-up check and
the Alembic plugin's diff compare shapes, through :func:`shape_changes`. Dependencies compare
as sets: the database keeps no order among a step's dependencies.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pgflow.definition import FlowDefinition


@dataclass(frozen=True, slots=True)
class StepShape:
    slug: str
    step_type: str
    depends_on: frozenset[str]

    @classmethod
    def of(cls, slug: str, step_type: object, depends_on: Iterable[str]) -> StepShape:
        return cls(slug, str(step_type), frozenset(depends_on))


FlowShape = tuple[StepShape, ...]


def shape_of(definition: FlowDefinition) -> FlowShape:
    return tuple(StepShape.of(s.slug, s.step_type, s.depends_on) for s in definition.steps)


def shape_changes(stored: FlowShape, wanted: FlowShape) -> list[str]:
    """What differs, one line per change (empty when the shapes are the same)."""
    code = [step.slug for step in wanted]
    database = [step.slug for step in stored]
    changes = []
    added = [slug for slug in code if slug not in database]
    removed = [slug for slug in database if slug not in code]
    if added:
        changes.append(f"steps added: {', '.join(added)}")
    if removed:
        changes.append(f"steps removed: {', '.join(removed)}")
    kept_code = [slug for slug in code if slug in database]
    kept_database = [slug for slug in database if slug in code]
    if kept_code != kept_database:
        changes.append(f"steps reordered: {', '.join(kept_database)} -> {', '.join(kept_code)}")
    wanted_by_slug = {step.slug: step for step in wanted}
    for old in stored:
        new = wanted_by_slug.get(old.slug)
        if new is None:
            continue
        if new.step_type != old.step_type:
            changes.append(f"step {old.slug!r} type: {old.step_type} -> {new.step_type}")
        if new.depends_on != old.depends_on:
            changes.append(
                f"step {old.slug!r} dependencies: {_names(old.depends_on, database)}"
                f" -> {_names(new.depends_on, code)}"
            )
    return changes


def _names(slugs: frozenset[str], order: list[str]) -> str:
    """The dependencies in declaration order (sets have none)."""
    return "[" + ", ".join(sorted(slugs, key=lambda s: order.index(s) if s in order else -1)) + "]"
