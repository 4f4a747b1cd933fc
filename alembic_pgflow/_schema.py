"""What the ``pgflow`` branch's revisions do: install the schema, or (opted in) remove it.

Upgrade runs the same installer as ``pgflow db install``, inside Alembic's transaction; it is
idempotent, so each schema revision simply brings the database to what this package ships.

Downgrade deletes every flow, run and queue, so it refuses unless asked for explicitly:
``alembic -x pgflow_drop_schema=yes downgrade pgflow@base`` (or, from Python,
``config.attributes["pgflow_drop_schema"] = True``). It removes what pgflow-python installed
and leaves what it adopted: upstream pgflow or pgmq set up by other tooling stay.
"""

from __future__ import annotations

from alembic import context, op
from sqlalchemy.engine import Connection

from alembic_pgflow._errors import SchemaDowngradeRefusedError, SchemaRevisionError
from alembic_pgflow._stored import query
from pgflow.errors import PgflowError
from pgflow.schema import install

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
    drop_schema(op.get_bind())


def drop_allowed() -> bool:
    if context.config.attributes.get(DROP_SCHEMA_FLAG) is True:
        return True
    value = context.get_x_argument(as_dictionary=True).get(DROP_SCHEMA_FLAG, "")
    return value.strip().lower() in {"1", "true", "yes", "on"}


def drop_schema(connection: Connection) -> None:
    """Remove what pgflow-python installed here (its bookkeeping says what and how)."""
    if not connection.execute(query("bookkeeping_present")).scalar_one():
        return
    how = {row.component: row.how for row in connection.execute(query("installed_items"))}
    if how.get("upstream") == "applied":
        for slug in connection.execute(query("flow_slugs")).scalars().all():
            # Drops each flow's pgmq queue too, which matters when pgmq itself stays.
            connection.execute(query("delete_flow"), {"flow_slug": slug, "delete_runs": True})
        connection.exec_driver_sql("DROP SCHEMA pgflow CASCADE")
    elif "upstream" in how:  # adopted: only undo our additive column
        connection.exec_driver_sql("ALTER TABLE pgflow.flows DROP COLUMN IF EXISTS flow_type")
    if "realtime" in how:
        connection.exec_driver_sql(
            "DROP FUNCTION IF EXISTS realtime.send(jsonb, text, text, boolean)"
        )
        _drop_schema_if_empty(connection, "realtime")
    if how.get("pgmq") == "plain":
        connection.exec_driver_sql("DROP SCHEMA pgmq CASCADE")
    elif how.get("pgmq") in ("extension", "registered"):
        connection.exec_driver_sql("DROP EXTENSION IF EXISTS pgmq CASCADE")
        # CREATE EXTENSION made the schema its control file names, but not as a member.
        _drop_schema_if_empty(connection, "pgmq")
    connection.exec_driver_sql("DROP SCHEMA pgflow_python CASCADE")


def _drop_schema_if_empty(connection: Connection, schema: str) -> None:
    if connection.execute(query("schema_is_empty"), {"schema": schema}).scalar_one():
        connection.exec_driver_sql(f'DROP SCHEMA "{schema}"')
