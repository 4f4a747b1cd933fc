"""Named SQL queries kept in ``.sql`` files (``-- name: x`` blocks), parsed once."""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

_NAME_LINE = re.compile(r"^-- name: (?P<name>[a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_named_queries(text: str) -> dict[str, str]:
    """Split ``text`` into ``{name: statement}``; comments after the name line are kept."""
    queries: dict[str, str] = {}
    matches = list(_NAME_LINE.finditer(text))
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following else len(text)
        name = match.group("name")
        if name in queries:
            raise ValueError(f"query {name!r} is defined twice")
        queries[name] = text[match.end() : end].strip()
    return queries


@cache
def load(package: str, resource: str) -> dict[str, str]:
    """Named queries of a ``.sql`` resource shipped inside ``package``."""
    return parse_named_queries(files(package).joinpath(resource).read_text(encoding="utf-8"))
