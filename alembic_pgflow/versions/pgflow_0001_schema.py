"""pgflow schema: pgmq, the realtime shim, upstream pgflow and pgflow-python's own SQL.

Revision ID: pgflow_0001
Revises:
Create Date: 2026-11-25

Ships with alembic_pgflow (branch ``pgflow``). The upgrade runs the idempotent installer, so it
also adopts a schema installed by ``pgflow db install`` or by TypeScript pgflow's tooling. The
downgrade refuses unless ``-x pgflow_drop_schema=yes`` is given (see docs/alembic.md).
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic_pgflow._schema import downgrade_schema, upgrade_schema

revision: str = "pgflow_0001"
down_revision: str | None = None
branch_labels: Sequence[str] | None = ("pgflow",)
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    upgrade_schema()


def downgrade() -> None:
    downgrade_schema()
