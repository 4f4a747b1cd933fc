"""Every exception the Alembic plugin raises (the rest of pgflow's are in :mod:`pgflow.errors`).

Each is also an Alembic ``CommandError``, so the ``alembic`` command prints the message as
``FAILED: ...`` instead of a traceback: these are decisions for the user, not crashes.
"""

from __future__ import annotations

from alembic.util import CommandError

from pgflow.errors import PgflowError


class MigrationError(PgflowError, CommandError):
    """Base class: a migration that cannot (or may not) proceed; the message says why."""


class FlowDiscoveryError(MigrationError, ValueError):
    """A source given to ``include_flows`` that names no flow, or conflicting flows."""


class FlowShapeChangedError(MigrationError):
    """Autogenerate found flows whose steps or dependencies changed, with no data loss allowed."""


class FlowHasRunsError(MigrationError):
    """A flow would be dropped while it has runs, and the revision does not allow deleting them."""


class FlowConflictError(MigrationError):
    """A revision creates a flow that already exists with a different definition (or is gone)."""


class SchemaRevisionError(MigrationError):
    """The pgflow schema revision could not run (offline mode, privileges, incompatible DB)."""


class SchemaDowngradeRefusedError(SchemaRevisionError):
    """The pgflow schema revision was downgraded without the explicit opt-in."""


class DatabaseURLError(MigrationError):
    """No database configured for the migration, or a URL pgflow cannot use."""
