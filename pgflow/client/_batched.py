"""Two named statements in one round trip, for the waiter's LISTEN and UNLISTEN.

A start-and-wait sends its start with ``LISTEN`` after it, and the read of the ended run with
``UNLISTEN`` after it: each pair is one simple-query message (parameters bound on the client,
as psycopg's ``ClientCursor`` does), so PostgreSQL runs both in one implicit transaction and
answers once. The first statement's rows are the result; the second returns none.

``LISTEN`` takes effect when its transaction commits, here the start's own commit: every
notification committed after the start is delivered, and no worker can end (or even see) the
run before that commit. Named statements stay as they are in ``pgflow/sql/`` (the start is
shared with other callers); only their concatenation is new.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, CursorResult

from pgflow._sql import sql_text


@cache
def _then(first: str, then: str) -> sa.TextClause:
    statement = sql_text(first)
    if not statement.rstrip().endswith(";"):
        raise ValueError(f"query {first!r} must end with ';' to be followed by {then!r}")
    return sa.text(f"{statement}\n{sql_text(then)}")


def execute_then(
    connection: Connection, first: str, then: str, params: Mapping[str, Any]
) -> CursorResult[Any]:
    """Run the named query ``first`` and then the parameterless ``then`` in one round trip;
    the result is ``first``'s."""
    with _client_side_binding(connection):
        return connection.execute(_then(first, then), dict(params))


@contextmanager
def _client_side_binding(connection: Connection) -> Iterator[None]:
    # The extended protocol (server-side parameters) takes one statement per message; a client
    # cursor sends the statement text with its values quoted by psycopg, as one simple query.
    driver = connection.connection.driver_connection
    kept = driver.cursor_factory  # type: ignore[union-attr]
    client = (
        psycopg.AsyncClientCursor
        if isinstance(driver, psycopg.AsyncConnection)
        else psycopg.ClientCursor
    )
    driver.cursor_factory = client  # type: ignore[union-attr]
    try:
        yield
    finally:
        driver.cursor_factory = kept  # type: ignore[union-attr]
