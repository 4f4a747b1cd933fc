"""The one place that holds the SQL pgflow runs at run time (client and worker).

Statements live in named-query files under ``pgflow/sql/`` (``-- name: x`` blocks: a one-line
description, then the statement), so the whole database contract reads in a few files.
Names are unique across files.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

import sqlalchemy as sa

from pgflow._queries import parse_named_queries


@cache
def _all_queries() -> dict[str, str]:
    merged: dict[str, str] = {}
    folder = files("pgflow").joinpath("sql")
    for resource in sorted(folder.iterdir(), key=lambda r: r.name):
        if not resource.name.endswith(".sql"):
            continue
        for name, statement in parse_named_queries(resource.read_text(encoding="utf-8")).items():
            if name in merged:
                raise ValueError(f"query {name!r} is defined in two files under pgflow/sql")
            merged[name] = statement
    return merged


def sql_text(name: str) -> str:
    """The statement as written, with ``:named`` parameters."""
    return _all_queries()[name]


_NAMED_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_][A-Za-z0-9_]*)")


@cache
def psycopg_text(name: str) -> str:
    """The statement for psycopg directly (``%(named)s`` parameters), used on the worker's hot
    path; ``::type`` casts are left alone."""
    statement = sql_text(name).replace("%", "%%")
    return _NAMED_PARAMETER.sub(r"%(\1)s", statement)


@cache
def query(name: str) -> sa.TextClause:
    """The statement as a SQLAlchemy ``text()`` with ``:named`` parameters."""
    return sa.text(sql_text(name))
