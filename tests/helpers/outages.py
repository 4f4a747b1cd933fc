"""Database outages for fault-injection tests, on the shared server: one test database at a time
refuses every connection (superusers included) and loses the ones it had."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL

from tests.helpers.database import libpq_url


@contextmanager
def database_outage(url: URL) -> Iterator[None]:
    """While inside, the database of ``url`` is unreachable: its connections are terminated and
    new ones refused (``ALLOW_CONNECTIONS false``); afterwards it is reachable again."""
    name = url.database
    assert name, "the URL names no database"
    database = sql.Identifier(name)
    with psycopg.connect(libpq_url(url.set(database="postgres")), autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(database))
        try:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            yield
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(database))
