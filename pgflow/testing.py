"""Test helpers and a pytest plugin (registered as ``pgflow``) for applications using pgflow.

Fixtures give each test its own database, cloned from a template that has the pgflow schema
installed once per test session::

    def test_something(pgflow_engine):
        with pgflow_engine.begin() as conn:
            ...

The server comes from ``DATABASE_URL``, else 127.0.0.1:5432, else an embedded PostgreSQL
(``pip install 'pgflow-python[embedded]'``); if none is available the fixtures fail with a
message saying what to set. They never skip silently.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import URL, Engine

from pgflow._db import create_engine
from pgflow._devserver import DevServer, dev_server
from pgflow.schema import install

__all__ = [
    "create_database",
    "drop_database",
    "pgflow_database",
    "pgflow_empty_database",
    "pgflow_engine",
    "pgflow_server",
    "pgflow_template_database",
    "temporary_database",
]

TEST_DATABASE_PREFIX = "pgflow_test_"


def _admin_connection(server: URL) -> psycopg.Connection[tuple[object, ...]]:
    conninfo = server.set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(conninfo, autocommit=True, connect_timeout=5)


def create_database(server: URL, name: str, *, template: str | None = None) -> URL:
    """Create database ``name`` on ``server`` (optionally as a copy of ``template``)."""
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
    with _admin_connection(server) as connection:
        connection.execute(statement)
    return server.set(database=name)


def drop_database(server: URL, name: str) -> None:
    """Drop database ``name``, disconnecting anyone still connected."""
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with _admin_connection(server) as connection:
        connection.execute(statement)


@contextmanager
def temporary_database(
    server: URL | None = None, *, template: str | None = None, install_schema: bool = False
) -> Iterator[URL]:
    """A uniquely named database that is dropped afterwards."""
    server_url = server if server is not None else dev_server().url
    name = f"{TEST_DATABASE_PREFIX}{uuid.uuid4().hex[:12]}"
    url = create_database(server_url, name, template=template)
    try:
        if install_schema:
            install(url)
        yield url
    finally:
        drop_database(server_url, name)


@pytest.fixture(scope="session")
def pgflow_server() -> DevServer:
    """The PostgreSQL server the tests use (see the module docstring for the order tried)."""
    return dev_server()


@pytest.fixture(scope="session")
def pgflow_template_database(pgflow_server: DevServer) -> Iterator[str]:
    """Name of a database with the pgflow schema installed, cloned by ``pgflow_database``."""
    with temporary_database(pgflow_server.url, install_schema=True) as url:
        yield str(url.database)


@pytest.fixture
def pgflow_database(pgflow_server: DevServer, pgflow_template_database: str) -> Iterator[URL]:
    """URL of a fresh database with the pgflow schema installed, dropped after the test."""
    with temporary_database(pgflow_server.url, template=pgflow_template_database) as url:
        yield url


@pytest.fixture
def pgflow_empty_database(pgflow_server: DevServer) -> Iterator[URL]:
    """URL of a fresh, empty database (no pgflow schema), dropped after the test."""
    with temporary_database(pgflow_server.url) as url:
        yield url


@pytest.fixture
def pgflow_engine(pgflow_database: URL) -> Iterator[Engine]:
    """A SQLAlchemy engine (psycopg 3) on ``pgflow_database``."""
    engine = create_engine(pgflow_database, poolclass=sa.pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()
