"""Find a PostgreSQL server for the demo and the tests, starting an embedded one if needed.

Order: ``DATABASE_URL``; the local server at 127.0.0.1:5432; an embedded server from the PyPI
package ``pgserver``; a testcontainers PostgreSQL where Docker runs; else one clear error.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from functools import cache

import psycopg
from sqlalchemy.engine import URL

from pgflow._db import normalize_url
from pgflow.errors import DatabaseUnavailableError

LOCAL_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"

NO_SERVER_MESSAGE = (
    "no PostgreSQL server found: set DATABASE_URL, start PostgreSQL on 127.0.0.1:5432, "
    "or install the embedded server with `pip install 'pgflow-python[embedded]'`"
)


@dataclass(frozen=True)
class DevServer:
    url: URL
    """A superuser URL on a maintenance database; tests create their own databases next to it."""
    kind: str
    """``DATABASE_URL``, ``local``, ``embedded`` or ``container``."""


def _reachable(url: str) -> bool:
    try:
        psycopg.connect(url, connect_timeout=2).close()
    except psycopg.Error:
        return False
    return True


def start_embedded() -> DevServer:
    """Start a throwaway PostgreSQL from the ``pgserver`` wheel (works as root; ~1 s)."""
    data_dir = tempfile.mkdtemp(prefix="pgflow-embedded-")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pgserver's platformdirs use warns without XDG dirs
        try:
            import pgserver  # noqa: PLC0415 - optional dependency
        except ImportError as exc:
            raise DatabaseUnavailableError(NO_SERVER_MESSAGE) from exc
        server = pgserver.get_server(data_dir, cleanup_mode="stop")  # type: ignore[attr-defined]

    def stop() -> None:
        server.cleanup()
        shutil.rmtree(data_dir, ignore_errors=True)

    atexit.register(stop)
    return DevServer(normalize_url(server.get_uri()), "embedded")


def _start_container() -> DevServer | None:
    if not os.path.exists("/var/run/docker.sock"):
        return None
    try:
        from testcontainers.postgres import PostgresContainer  # noqa: PLC0415 - optional
    except ImportError:
        return None
    container = PostgresContainer("postgres:17", driver="psycopg")
    container.start()
    atexit.register(container.stop)
    return DevServer(normalize_url(container.get_connection_url()), "container")


@cache
def dev_server() -> DevServer:
    """The server to use for the demo and tests (cached for the process)."""
    if url := os.environ.get("DATABASE_URL"):
        return DevServer(normalize_url(url), "DATABASE_URL")
    if _reachable(LOCAL_SERVER):
        return DevServer(normalize_url(LOCAL_SERVER), "local")
    try:
        return start_embedded()
    except DatabaseUnavailableError:
        container = _start_container()
        if container is None:
            raise
        return container
