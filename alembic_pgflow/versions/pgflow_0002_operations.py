"""pgflow schema: run control, schedules, failure records, dashboard indexes, faster completion,
ended-run records, step conditions, wait steps, run deadlines and concurrency limits.

Revision ID: pgflow_0002
Revises: pgflow_0001
Create Date: 2026-11-29

Ships with alembic_pgflow (branch ``pgflow``). Like ``pgflow_0001`` the upgrade runs the idempotent
installer, which applies the extension SQL files this release adds (and nothing twice), so a
database installed by the previous release, by ``pgflow db install`` or by this revision's parent
ends up the same.

The downgrade back to ``pgflow_0001`` changes nothing: every object this release adds is additive
(new tables in ``pgflow_python``, new functions and indexes) and the previous release's code
ignores them. Downgrading further, past ``pgflow_0001``, removes the whole schema (opt-in, see
docs/alembic.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic_pgflow._schema import upgrade_schema

revision: str = "pgflow_0002"
down_revision: str | None = "pgflow_0001"
branch_labels: Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EXTENSION_THROUGH = "0082_rate_limits.sql"
"""The newest extension file this revision ships (tests/unit/test_extension_sql.py checks that no
file is newer: while this revision is unreleased a new file moves this forward; after the
release it needs a new revision, see pgflow/schema/sql/extension/README.md)."""


def upgrade() -> None:
    upgrade_schema()


def downgrade() -> None:
    """Additive objects stay (see the module docstring)."""
