"""Start-up checks: the schema is installed, each flow exists with its class's shape, and the
worker's role can open its connections and has the privileges its work needs."""

from __future__ import annotations

from collections.abc import Mapping

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow._registered import check_registered, stored_rows
from pgflow.compiler import compile_flow
from pgflow.definition import FlowDefinition
from pgflow.errors import FlowNotReadyError, IncompatibleSchemaError, SchemaError
from pgflow.schema import status
from pgflow.worker._privileges import check_worker_access, recording_privilege_error


def check_schema(engine: Engine) -> None:
    """Refuse a database whose schema this release cannot drive, before claiming anything."""
    report = status(engine)
    if report.problem is not None:
        raise IncompatibleSchemaError(f"the worker cannot use this database: {report.problem}")
    if report.pending:
        raise SchemaError(
            f"the pgflow schema is not installed or not complete ({len(report.pending)} items "
            f"pending, first {report.pending[0]}): run `pgflow db install` (it adopts a schema "
            "installed by TypeScript pgflow tooling and adds pgflow-python's functions)"
        )


def check_flows(
    engine: Engine,
    definitions: list[FlowDefinition],
    *,
    compile_missing: bool,
    connections: Mapping[str, str] | None = None,
) -> None:
    queues = [definition.slug for definition in definitions]
    try:
        check_schema(engine)
        with engine.begin() as connection:
            for definition in definitions:
                _check_flow(connection, definition, compile_missing=compile_missing)
    except sa.exc.DBAPIError as exc:
        if recording_privilege_error(exc) is None:
            raise
        # A role with few grants or none (not even USAGE on the schemas) is refused by the
        # first query; the access check says what is missing and how to grant it.
        check_worker_access(engine, queues, connections)
        raise
    check_worker_access(engine, queues, connections)


def _check_flow(
    connection: sa.Connection, definition: FlowDefinition, *, compile_missing: bool
) -> None:
    rows = stored_rows(connection, definition.slug)
    if not rows and compile_missing:
        for statement in compile_flow(definition):
            connection.execute(sa.text(statement))
        return
    if not rows:
        raise FlowNotReadyError(
            f"flow {definition.slug!r} is not in the database: generate and apply a "
            "migration (`alembic revision --autogenerate`, `alembic upgrade heads`), or "
            f"run the SQL of `pgflow compile`; in development, --compile-missing"
        )
    check_registered(connection, definition, rows, by="worker")
