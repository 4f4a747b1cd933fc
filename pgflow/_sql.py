"""Every statement pgflow runs by name: the client's, the worker's, the installer's and the
Alembic plugin's, kept in the named-query files of ``pgflow/sql/`` and parsed once.

The file format (one format for every file in that folder)::

    -- What this file holds (free comments before the first query).

    -- name: start_something
    -- description: One line saying what the statement does and what it returns.
    -- Optional comment lines: why it is written this way (races, invariants).
    SELECT ... WHERE x = :named_parameter

A name is unique across all the files, so a name says which statement runs wherever it is
read. Parameters are ``:named``; ``::type`` casts are left alone. The comments stay part of the
statement sent to PostgreSQL (they show in ``pg_stat_activity``).

Scripts applied whole (the schema's DDL in ``pgflow/schema/sql/``) are not named queries; the
installer reads them through ``pgflow.schema._sources``.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

import sqlalchemy as sa

__all__ = ["parse_named_queries", "psycopg_text", "query", "query_names", "sql_text"]

_NAME_LINE = re.compile(r"^-- name: (?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_DESCRIPTION = re.compile(r"-- description: \S")
_NAMED_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")


def parse_named_queries(text: str, *, source: str = "<text>") -> dict[str, str]:
    """Split a named-query file into ``{name: statement}``, checking the format."""
    queries: dict[str, str] = {}
    matches = list(_NAME_LINE.finditer(text))
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(text)
        name = match.group("name")
        statement = text[match.end() : end].strip()
        if name in queries:
            raise ValueError(f"{source}: query {name!r} is defined twice")
        if not _DESCRIPTION.match(statement):
            raise ValueError(
                f"{source}: query {name!r} needs a '-- description: ...' line after its name"
            )
        if not any(line and not line.startswith("--") for line in statement.splitlines()):
            raise ValueError(f"{source}: query {name!r} has no statement")
        queries[name] = statement
    return queries


@cache
def _all_queries() -> dict[str, str]:
    merged: dict[str, str] = {}
    folder = files("pgflow").joinpath("sql")
    for resource in sorted(folder.iterdir(), key=lambda r: r.name):
        if not resource.name.endswith(".sql"):
            continue
        source = f"pgflow/sql/{resource.name}"
        for name, statement in parse_named_queries(
            resource.read_text(encoding="utf-8"), source=source
        ).items():
            if name in merged:
                raise ValueError(f"{source}: query {name!r} is also defined in another file")
            merged[name] = statement
    return merged


def query_names() -> frozenset[str]:
    return frozenset(_all_queries())


def sql_text(name: str) -> str:
    """The statement as written, with ``:named`` parameters."""
    return _all_queries()[name]


@cache
def query(name: str) -> sa.TextClause:
    """The statement as a SQLAlchemy ``text()``, for ``connection.execute(query(name), params)``."""
    return sa.text(sql_text(name))


@cache
def psycopg_text(name: str) -> str:
    """The statement for psycopg directly (``%(named)s`` parameters), for code that holds a
    psycopg connection (the worker's hot path)."""
    statement = sql_text(name).replace("%", "%%")
    return _NAMED_PARAMETER.sub(r"%(\1)s", statement)
