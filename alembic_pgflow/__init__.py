"""Alembic plugin for pgflow: the schema as a revision branch, and flows in autogenerate.

In alembic.ini, next to your own directory::

    version_locations = %(here)s/migrations/versions alembic_pgflow:versions

In env.py::

    import alembic_pgflow

    alembic_pgflow.include_flows("myapp.flows")
    ...
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        process_revision_directives=alembic_pgflow.process_revision_directives,
    )

Then ``alembic revision --autogenerate`` writes ``op.create_flow(...)``,
``op.update_flow_options(...)`` and ``op.drop_flow(...)`` into revisions (and
``op.create_schedule``/``update_schedule``/``drop_schedule`` for declared schedules), and
``alembic upgrade heads`` installs the schema and the flows. See docs/alembic.md.
"""

from typing import Any

from alembic_pgflow import _compare, _render, _schedules  # noqa: F401  (registers them)
from alembic_pgflow._compare import plan_operations
from alembic_pgflow._environment import configure_database_url
from alembic_pgflow._ops import CreateFlowOp, DropFlowOp, UpdateFlowOptionsOp
from alembic_pgflow._registry import FlowRegistry, include_flows
from alembic_pgflow._revisions import (
    PGFLOW_SCHEMAS,
    SCHEMA_BRANCH,
    include_name,
    process_revision_directives,
    version_location,
)
from alembic_pgflow._schedules import CreateScheduleOp, DropScheduleOp, UpdateScheduleOp
from alembic_pgflow._schema import DROP_SCHEMA_FLAG
from pgflow._deprecated import moved_attribute

__all__ = [
    "DROP_SCHEMA_FLAG",
    "PGFLOW_SCHEMAS",
    "SCHEMA_BRANCH",
    "CreateFlowOp",
    "CreateScheduleOp",
    "DropFlowOp",
    "DropScheduleOp",
    "FlowRegistry",
    "UpdateFlowOptionsOp",
    "UpdateScheduleOp",
    "configure_database_url",
    "include_flows",
    "include_name",
    "plan_operations",
    "process_revision_directives",
    "version_location",
]

# The errors this module exported before 0.2 are in alembic_pgflow.errors.
_MOVED = dict.fromkeys(
    [
        "FlowConflictError",
        "FlowDiscoveryError",
        "FlowHasRunsError",
        "FlowShapeChangedError",
        "MigrationError",
        "SchemaDowngradeRefusedError",
        "SchemaRevisionError",
    ],
    "alembic_pgflow.errors",
)


def __getattr__(name: str) -> Any:
    return moved_attribute(__name__, _MOVED, name)
