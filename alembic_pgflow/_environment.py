"""Which database an Alembic environment migrates: ``DATABASE_URL``, as the rest of pgflow."""

from __future__ import annotations

import os

from alembic.config import Config

from alembic_pgflow.errors import DatabaseURLError
from pgflow._db import POOL_MODE, normalize_url, pooled_url
from pgflow.errors import InvalidDatabaseURLError

_EXAMPLE = "export DATABASE_URL=postgresql://user@host:5432/dbname"


def configure_database_url(config: Config) -> str:
    """Set ``sqlalchemy.url`` to ``DATABASE_URL`` (when set), on the psycopg 3 driver.

    Without ``DATABASE_URL`` the ``sqlalchemy.url`` of alembic.ini is used, also on psycopg 3.
    ``alembic init``'s placeholder (``driver://...``) or no URL at all is an error naming the fix.
    Returns the URL (password hidden), e.g. for a log line.
    """
    given = os.environ.get("DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not given:
        raise DatabaseURLError(f"no database configured: {_EXAMPLE} (or set sqlalchemy.url)")
    try:
        url = normalize_url(given)
    except InvalidDatabaseURLError as exc:
        if os.environ.get("DATABASE_URL"):
            raise DatabaseURLError(f"DATABASE_URL: {exc}") from None
        raise DatabaseURLError(f"sqlalchemy.url in alembic.ini: {exc}; or {_EXAMPLE}") from None
    if pooled_url(url):
        # env.py builds its own engine, which would prepare statements (and libpq refuses the
        # parameter): migrations, like any DDL session, belong on a direct connection.
        raise DatabaseURLError(
            f"the database URL goes through a transaction pooler ({POOL_MODE}=transaction): run "
            "migrations with a direct URL to the server (DATABASE_URL=postgresql://...:5432/...)"
        )
    # ConfigParser interpolates "%": a password with %-escapes must reach SQLAlchemy unchanged.
    config.set_main_option(
        "sqlalchemy.url", url.render_as_string(hide_password=False).replace("%", "%%")
    )
    return url.render_as_string(hide_password=True)
