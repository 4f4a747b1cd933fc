"""Remove what pgflow-python installed in a database; leave what it adopted.

Upstream pgflow or pgmq set up by other tooling stay: the bookkeeping says, per component,
whether we applied it or adopted it. Used by ``pgflow db uninstall`` and by the Alembic
schema branch's downgrade.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from pgflow._db import Bind, transaction
from pgflow._sql import query


def uninstall(bind: Bind) -> bool:
    """Remove what pgflow-python installed, all or nothing: with a ``Connection`` inside the
    caller's transaction (the Alembic downgrade), with an engine or URL in its own. Every flow,
    run and queue of a schema it applied goes with it. False when nothing was installed."""
    with transaction(bind) as connection:
        connection.execute(query("lock_installer"))
        return _uninstall(connection)


def _uninstall(connection: Connection) -> bool:
    if not connection.execute(query("bookkeeping_present")).scalar_one():
        return False
    how = {row.component: row.how for row in connection.execute(query("installed_items"))}
    if how.get("upstream") == "applied":
        for slug in connection.execute(query("flow_slugs")).scalars().all():
            # Drops each flow's pgmq queue too, which matters when pgmq itself stays.
            connection.execute(query("delete_flow"), {"flow_slug": slug, "delete_runs": True})
        connection.execute(query("uninstall_pgflow_schema"))
    elif "upstream" in how:
        connection.execute(query("uninstall_flow_type_column"))
    if "realtime" in how:
        connection.execute(query("uninstall_realtime_shim"))
        if _schema_is_empty(connection, "realtime"):
            connection.execute(query("uninstall_empty_realtime_schema"))
    if how.get("pgmq") == "plain":
        connection.execute(query("uninstall_pgmq_schema"))
    elif how.get("pgmq") in ("extension", "registered"):
        connection.execute(query("uninstall_pgmq_extension"))
        if _schema_is_empty(connection, "pgmq"):
            connection.execute(query("uninstall_empty_pgmq_schema"))
    connection.execute(query("uninstall_bookkeeping"))
    return True


def _schema_is_empty(connection: Connection, schema: str) -> bool:
    return bool(connection.execute(query("schema_is_empty"), {"schema": schema}).scalar_one())
