"""The pytest plugin (the ``pytest11`` entry point ``pgflow``): database fixtures for tests.

Fixtures give each test its own database, cloned from a template that has the pgflow schema
installed once per test session::

    def test_something(pgflow_engine):
        with pgflow_engine.begin() as conn:
            ...

The server comes from ``DATABASE_URL``, else 127.0.0.1:5432, else an embedded PostgreSQL
(``pip install 'pgflow-python[embedded]'``); if none is available the fixtures fail with a
message saying what to set. They never skip silently. The helpers the fixtures are built on
are importable without pytest from :mod:`pgflow.testing`.

Test databases are named ``pgflow_test_<12 hex digits>``; ``--pgflow-db-prefix`` (or the
environment variable ``PGFLOW_TEST_DATABASE_PREFIX``) sets another prefix.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from pgflow._db import create_engine
from pgflow._devserver import DevServer, dev_server
from pgflow.errors import InvalidDatabasePrefixError
from pgflow.testing import (
    PREFIX_VARIABLE,
    TEST_DATABASE_PREFIX,
    database_name_prefix,
    temporary_database,
)

__all__ = [
    "pgflow_database",
    "pgflow_database_prefix",
    "pgflow_empty_database",
    "pgflow_engine",
    "pgflow_server",
    "pgflow_template_database",
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("pgflow").addoption(
        "--pgflow-db-prefix",
        metavar="PREFIX",
        help="start of the names of the databases the pgflow fixtures create (default: "
        f"${PREFIX_VARIABLE}, else {TEST_DATABASE_PREFIX})",
    )


def pytest_configure(config: pytest.Config) -> None:
    prefix = config.getoption("pgflow_db_prefix", None)
    try:
        database_name_prefix(prefix)
    except InvalidDatabasePrefixError as exc:
        raise pytest.UsageError(f"--pgflow-db-prefix: {exc}") from None


@pytest.fixture(scope="session")
def pgflow_database_prefix(request: pytest.FixtureRequest) -> str:
    """The start of the names of the databases these fixtures create."""
    return database_name_prefix(request.config.getoption("pgflow_db_prefix", None))


@pytest.fixture(scope="session")
def pgflow_server() -> DevServer:
    """The PostgreSQL server the tests use (see the module docstring for the order tried)."""
    return dev_server()


@pytest.fixture(scope="session")
def pgflow_template_database(
    pgflow_server: DevServer, pgflow_database_prefix: str
) -> Iterator[str]:
    """Name of a database with the pgflow schema installed, cloned by ``pgflow_database``."""
    with temporary_database(
        pgflow_server.url, install_schema=True, prefix=pgflow_database_prefix
    ) as url:
        yield str(url.database)


@pytest.fixture
def pgflow_database(
    pgflow_server: DevServer, pgflow_template_database: str, pgflow_database_prefix: str
) -> Iterator[URL]:
    """URL of a fresh database with the pgflow schema installed, dropped after the test."""
    with temporary_database(
        pgflow_server.url, template=pgflow_template_database, prefix=pgflow_database_prefix
    ) as url:
        yield url


@pytest.fixture
def pgflow_empty_database(pgflow_server: DevServer, pgflow_database_prefix: str) -> Iterator[URL]:
    """URL of a fresh, empty database (no pgflow schema), dropped after the test."""
    with temporary_database(pgflow_server.url, prefix=pgflow_database_prefix) as url:
        yield url


@pytest.fixture
def pgflow_engine(pgflow_database: URL) -> Iterator[Engine]:
    """A SQLAlchemy engine (psycopg 3) on ``pgflow_database``."""
    engine = create_engine(pgflow_database, poolclass=sa.pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()
