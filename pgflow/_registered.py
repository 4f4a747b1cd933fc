"""A flow class against the database's copy of its flow: the worker at start and the client at a
run's first start both refuse another shape (same message) and report options that differ.

The shape cannot change under runs in flight (docs/alembic.md); options can, so a difference in
options is a warning (``flow.options_differ``), not an error: the database's values apply.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Mapping, Sequence

from sqlalchemy.engine import Connection, RowMapping

from pgflow import _sql, telemetry
from pgflow._shape import StepShape, shape_changes, shape_of
from pgflow.definition import FLOW_OPTIONS, FlowDefinition
from pgflow.errors import FlowNotReadyError, FlowNotRegisteredError

# pgflow.create_flow's defaults in @pgflow/core 0.8.1; the database's own signature wins.
CREATE_FLOW_DEFAULTS: Mapping[str, int] = {"max_attempts": 3, "base_delay": 5, "timeout": 60}


def stored_rows(connection: Connection, slug: str) -> Sequence[RowMapping]:
    """The flow's steps as stored (empty when the flow is not in the database)."""
    result = connection.execute(_sql.query("registered_flow"), {"flow_slug": slug})
    return result.mappings().all()


def not_registered(connection: Connection, slug: str) -> FlowNotRegisteredError:
    """The error for a slug that names no stored flow, suggesting the closest stored ones."""
    stored = connection.execute(_sql.query("registered_flow_slugs")).scalars().all()
    return FlowNotRegisteredError(slug, similar=difflib.get_close_matches(slug, stored, n=3))


def require_registered(connection: Connection, slugs: Iterable[str]) -> None:
    """:class:`FlowNotRegisteredError` for the first of ``slugs`` that names no stored flow."""
    wanted = set(slugs)
    if not wanted:
        return
    stored = set(connection.execute(_sql.query("registered_flow_slugs")).scalars())
    for slug in sorted(wanted - stored):
        raise FlowNotRegisteredError(
            slug, similar=difflib.get_close_matches(slug, sorted(stored), n=3)
        )


def check_registered(
    connection: Connection, definition: FlowDefinition, rows: Sequence[RowMapping], by: str
) -> None:
    """Raise :class:`FlowNotReadyError` when the stored shape differs from the class's; emit
    ``flow.options_differ`` (warning) when only options or the flow type differ."""
    stored = tuple(StepShape.of(r["step_slug"], r["step_type"], r["depends_on"]) for r in rows)
    if changes := shape_changes(stored, shape_of(definition)):
        raise FlowNotReadyError(
            f"flow {definition.slug!r} in the database has another shape than its class "
            f"({'; '.join(changes)}). Flows are immutable: give the class a new slug, "
            "or migrate with allow_data_loss (see docs/alembic.md)"
        )
    if differences := option_differences(connection, definition, rows):
        telemetry.emit(
            telemetry.Event.FLOW_OPTIONS_DIFFER,
            level=logging.WARNING,
            flow=definition.slug,
            differences=differences,
            checked_by=by,
        )


def option_differences(
    connection: Connection, definition: FlowDefinition, rows: Sequence[RowMapping]
) -> list[str]:
    """``"timeout: database 60, class 30"`` lines; an omitted flow option means create_flow's
    default, an omitted step option means "inherit" (NULL)."""
    first = rows[0]
    differences = []
    if str(first["flow_type"]) != str(definition.flow_type):
        differences.append(f"type: database {first['flow_type']}, class {definition.flow_type}")
    defaults = (
        create_flow_defaults(connection)
        if any(value is None for value in definition.options.values())
        else {}
    )
    for name, value in definition.options.items():
        wanted = defaults[name] if value is None else value
        if first[f"flow_{name}"] != wanted:
            differences.append(f"{name}: database {first[f'flow_{name}']}, class {wanted}")
    by_slug = {row["step_slug"]: row for row in rows}
    for step in definition.steps:
        for name, value in step.options.items():
            if by_slug[step.slug][name] != value:
                differences.append(
                    f"step {step.slug!r} {name}: database {by_slug[step.slug][name]}, class {value}"
                )
    return differences


def create_flow_defaults(connection: Connection) -> dict[str, int]:
    """The values ``create_flow`` stores for omitted flow options on this database."""
    found = {row.name: row.value for row in connection.execute(_sql.query("create_flow_defaults"))}
    return {name: found.get(name, CREATE_FLOW_DEFAULTS[name]) for name in FLOW_OPTIONS}
