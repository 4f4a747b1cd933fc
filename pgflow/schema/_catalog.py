"""Runs the named queries of ``catalog.sql`` and whole SQL scripts on a connection."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from pgflow import _queries


def _statement(name: str) -> sa.TextClause:
    return sa.text(_queries.load("pgflow.schema", "catalog.sql")[name])


def one(connection: Connection, name: str, /, **params: Any) -> RowMapping:
    return connection.execute(_statement(name), params).mappings().one()


def scalar(connection: Connection, name: str, /, **params: Any) -> Any:
    return connection.execute(_statement(name), params).scalar_one()


def rows(connection: Connection, name: str, /, **params: Any) -> list[RowMapping]:
    return list(connection.execute(_statement(name), params).mappings())


def execute(connection: Connection, name: str, /, **params: Any) -> None:
    connection.execute(_statement(name), params)


def run_script(connection: Connection, script: str) -> None:
    """Run a multi-statement script in the connection's current transaction.

    Goes to psycopg directly: without parameters it uses the simple query protocol, which
    accepts many statements (and ``%`` signs) in one call; SQLAlchemy's text() would not.
    """
    driver_connection = connection.connection.driver_connection
    if driver_connection is None:
        raise RuntimeError("the SQLAlchemy connection has no open driver connection")
    driver_connection.execute(script)
