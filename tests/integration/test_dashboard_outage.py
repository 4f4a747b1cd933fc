"""The dashboard when its database goes away under it: a clear 503 page and one log line."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import URL, Engine

from pgflow.dashboard import create_app
from tests.helpers.dashboard import http_client
from tests.helpers.database import libpq_url


@pytest.fixture
def refusing_connections(pgflow_database: URL) -> Iterator[None]:
    """Yields with the test's database refusing new connections (as a database that went
    away does), its sessions ended; allows them again afterwards."""
    database = sql.Identifier(str(pgflow_database.database))
    with psycopg.connect(
        libpq_url(pgflow_database.set(database="postgres")), autocommit=True
    ) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(database))
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            [pgflow_database.database],
        )
        try:
            yield
        finally:
            admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(database))


def test_pages_answer_503_when_the_database_goes_away(
    pgflow_engine: Engine, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    with http_client(create_app(pgflow_engine)) as client:
        assert client.get("/flows").status_code == 200
        request.getfixturevalue("refusing_connections")
        caplog.set_level(logging.WARNING, logger="pgflow.dashboard")

        overview = client.get("/")
        runs = client.get("/runs")

    for page in (overview, runs):
        assert page.status_code == 503
        assert page.headers["content-type"].startswith("text/html")
        assert "Database unavailable" in page.text
        assert "not currently accepting connections" in page.text
        assert f"&#34;{pgflow_engine.url.database}&#34;" in page.text  # escaped
        assert "Traceback" not in page.text
        assert 'File "' not in page.text
    logged = [r for r in caplog.records if r.name == "pgflow.dashboard"]
    assert [r.getMessage().split(": ", 1)[0] for r in logged] == ["GET /", "GET /runs"]
    assert all("\n" not in r.getMessage() and r.exc_info is None for r in logged)
