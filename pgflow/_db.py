"""Database URLs and engines: one place that turns what the user gave into a psycopg 3 engine.

Behind a transaction pooler (PgBouncer ``pool_mode = transaction``, RDS Proxy, Supabase's pooler)
consecutive transactions of one client run on different server sessions, so nothing may outlive a
transaction: no server-side prepared statements (psycopg prepares a statement after its fifth use;
the next transaction finds it missing, or finds another client's under the same name), no
``LISTEN``. A URL says it goes through such a pooler with ``?pool_mode=transaction`` (PgBouncer's
own words); pgflow strips that parameter before libpq sees it and opens connections that never
prepare. An engine built elsewhere says the same with ``connect_args={"prepare_threshold": None}``:
pgflow reads that setting back from the engine's connections (:func:`through_pooler`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from pgflow.errors import (
    DatabaseNotConfiguredError,
    DatabaseUnavailableError,
    InvalidDatabaseURLError,
)

Bind = Engine | Connection | str | URL

_PG_SCHEMES = {"postgres", "postgresql", "postgresql+psycopg"}

POOL_MODE = "pool_mode"
"""The URL query parameter naming the pooler's mode (PgBouncer's ``pool_mode``)."""
_POOL_MODES = {"session": False, "transaction": True, "statement": True}


def normalize_url(url: str | URL) -> URL:
    """Accept libpq-style and SQLAlchemy-style URLs; always use the psycopg 3 driver."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
        # The port is parsed lazily; a non-numeric one fails here rather than at connect time.
        parsed.port  # noqa: B018
    except (sa.exc.ArgumentError, ValueError) as exc:
        raise InvalidDatabaseURLError(
            f"cannot parse the database URL {_masked(url)!r} ({exc}): "
            "use postgresql://user:password@host:port/dbname"
        ) from None
    if parsed.drivername not in _PG_SCHEMES:
        raise InvalidDatabaseURLError(
            f"unsupported database URL scheme {parsed.drivername!r}: "
            "use postgresql://user@host:port/dbname"
        )
    mode = parsed.query.get(POOL_MODE)
    if mode is not None and mode not in _POOL_MODES:
        raise InvalidDatabaseURLError(
            f"unknown {POOL_MODE}={mode!r} in the database URL {_masked(url)!r}: "
            f"use {POOL_MODE}=transaction (a transaction pooler such as PgBouncer's "
            f"transaction mode), {POOL_MODE}=statement or {POOL_MODE}=session"
        )
    return parsed.set(drivername="postgresql+psycopg")


def pooled_url(url: str | URL) -> bool:
    """Whether the URL says it goes through a transaction (or statement) pooler."""
    mode = normalize_url(url).query.get(POOL_MODE)
    return isinstance(mode, str) and _POOL_MODES[mode]


def server_url(url: str | URL) -> URL:
    """The URL as libpq takes it: psycopg's driver name, without our ``pool_mode``."""
    return normalize_url(url).difference_update_query([POOL_MODE])


def conninfo(url: str | URL) -> str:
    """A libpq connection string (with its password) for code that holds psycopg directly."""
    return server_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def through_pooler(driver_connection: Any) -> bool:
    """Whether a psycopg connection was opened for a transaction pooler (it never prepares)."""
    return getattr(driver_connection, "prepare_threshold", 0) is None


def engine_through_pooler(engine: Engine) -> bool:
    """Whether ``engine``'s connections are meant for a transaction pooler (asks one of them)."""
    with connect(engine) as connection:
        return through_pooler(connection.connection.driver_connection)


def _masked(url: str | URL) -> str:
    """The URL for a message, without a password that may follow ``user:``."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    return re.sub(r"(://[^:/@]*:)[^/]*@", r"\1***@", url)


def url_from_env(explicit: str | URL | None = None) -> URL:
    """The URL given explicitly, else ``DATABASE_URL``; a clear error when neither is set."""
    value = explicit if explicit is not None else os.environ.get("DATABASE_URL")
    if not value:
        raise DatabaseNotConfiguredError(
            "no database configured: set DATABASE_URL (or pass --database-url), "
            "e.g. postgresql://postgres@127.0.0.1:5432/postgres"
        )
    return normalize_url(value)


def display_url(url: URL) -> str:
    return url.set(drivername="postgresql").render_as_string(hide_password=True)


def create_engine(
    url: str | URL, *, connect_args: dict[str, Any] | None = None, **kwargs: Any
) -> Engine:
    """A SQLAlchemy engine on psycopg 3 that fails fast when the server is unreachable (and
    never prepares statements when the URL says ``pool_mode=transaction``)."""
    pooled = {"prepare_threshold": None} if pooled_url(url) else {}
    return sa.create_engine(
        server_url(url),
        connect_args={"connect_timeout": 5, **pooled, **(connect_args or {})},
        **kwargs,
    )


@contextmanager
def transaction(bind: Bind) -> Iterator[Connection]:
    """A connection inside a transaction.

    A caller's ``Connection`` is used as is, inside whatever transaction it has (so the work
    commits or rolls back with the caller's); an engine or URL gets its own committed transaction.
    """
    if isinstance(bind, Connection):
        yield bind
        return
    engine = bind if isinstance(bind, Engine) else create_engine(bind)
    try:
        with connect(engine) as connection, connection.begin():
            yield connection
    finally:
        if engine is not bind:
            engine.dispose()


def connect(engine: Engine) -> Connection:
    """``engine.connect()``, or a DatabaseUnavailableError naming the server and the reason."""
    try:
        return engine.connect()
    except sa.exc.OperationalError as exc:
        raise unavailable(engine.url, exc) from exc


async def connect_async(engine: AsyncEngine) -> AsyncConnection:
    """The async twin of :func:`connect`."""
    try:
        return await engine.connect()
    except sa.exc.OperationalError as exc:
        raise unavailable(engine.url, exc) from exc


def unavailable(url: URL, exc: BaseException) -> DatabaseUnavailableError:
    reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
    return DatabaseUnavailableError(
        f"cannot connect to {display_url(url)}: {reason}. "
        "Check that PostgreSQL is running and DATABASE_URL (or --database-url) points at it."
    )
