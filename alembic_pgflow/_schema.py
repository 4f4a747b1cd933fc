"""What the ``pgflow`` branch's revisions do: install the schema, or (opted in) remove it.

Upgrade runs the same installer as ``pgflow db install``, inside Alembic's transaction; it is
idempotent, so each schema revision simply brings the database to what this package ships.

Downgrade deletes every flow, run and queue, so it refuses unless asked for explicitly:
``alembic -x pgflow_drop_schema=yes downgrade pgflow@base`` (or, from Python,
``config.attributes["pgflow_drop_schema"] = True``). It runs the same uninstaller as
``pgflow db uninstall``: what pgflow-python installed goes, what it adopted stays.
"""

from __future__ import annotations

from alembic import context, op

from alembic_pgflow.errors import SchemaDowngradeRefusedError, SchemaRevisionError
from pgflow.errors import PgflowError
from pgflow.schema import install, uninstall

DROP_SCHEMA_FLAG = "pgflow_drop_schema"


def upgrade_schema() -> None:
    if context.is_offline_mode():
        raise SchemaRevisionError(
            "the pgflow schema revision needs a database connection (the installer inspects "
            "the server), so it cannot be rendered with --sql: apply it online first "
            "(alembic upgrade pgflow@head, or pgflow db install), then use --sql from there"
        )
    try:
        install(op.get_bind())
    except PgflowError as exc:  # e.g. missing privileges: a message to act on, not a crash
        raise SchemaRevisionError(f"installing the pgflow schema failed: {exc}") from exc


def downgrade_schema() -> None:
    if not drop_allowed():
        raise SchemaDowngradeRefusedError(
            "refusing to remove the pgflow schema: that deletes every flow, run and queue. "
            f"To do it anyway: alembic -x {DROP_SCHEMA_FLAG}=yes downgrade pgflow@base "
            "(or downgrade only your own revisions: alembic downgrade <your head revision>@base)"
        )
    if context.is_offline_mode():
        raise SchemaRevisionError(
            "removing the pgflow schema needs a database connection, not --sql"
        )
    uninstall(op.get_bind())


def drop_allowed() -> bool:
    if context.config.attributes.get(DROP_SCHEMA_FLAG) is True:
        return True
    value = context.get_x_argument(as_dictionary=True).get(DROP_SCHEMA_FLAG, "")
    return value.strip().lower() in {"1", "true", "yes", "on"}
