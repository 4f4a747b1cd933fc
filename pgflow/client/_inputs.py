"""A run's input: encoded as JSON PostgreSQL stores, checked against the flow's shape."""

from __future__ import annotations

import json
import re
from typing import Any

from pgflow._binds import json_kind
from pgflow.definition import FlowDefinition, StepType
from pgflow.errors import (
    ConcurrencyKeyError,
    InputNotJSONError,
    MapInputNotArrayError,
    RateLimitKeyError,
)

# An escaped NUL: \u0000 preceded by an even number of backslashes (an odd number would mean the
# backslash itself is escaped and "u0000" is plain text).
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


# A surrogate code point on its own is not a character: UTF-8 cannot encode it and jsonb rejects
# its escape. (Python strings hold astral characters as single code points, never as pairs.)
_SURROGATE = re.compile("[\ud800-\udfff]")


def encode_input(flow_slug: str, value: Any) -> str:
    """The input as JSON text, or an error raised before the database is touched (so a caller's
    transaction is never aborted by an input jsonb would refuse)."""
    try:
        text = json.dumps(value, allow_nan=False, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InputNotJSONError(
            flow_slug,
            f"JSON: {exc}",
            "use dict, list, str, int, float, bool and None only (convert datetimes, UUIDs, "
            "Decimals and sets first).",
        ) from None
    if _ESCAPED_NUL.search(text):
        raise InputNotJSONError(
            flow_slug,
            "JSON that PostgreSQL can store: it contains a NUL character (\\u0000), which jsonb "
            "rejects",
            "remove or replace it.",
        )
    if surrogate := _SURROGATE.search(text):
        raise InputNotJSONError(
            flow_slug,
            "JSON that PostgreSQL can store: it contains a lone surrogate "
            f"(\\u{ord(surrogate.group()):04x}), which is not a character (often text decoded "
            "with errors='surrogateescape')",
            "decode it properly or replace it.",
        )
    return text


def check_input_shape(definition: FlowDefinition, value: Any) -> None:
    """Upstream's root map rule and our limits' keys (extension/0080 and 0082 check them
    again, for starts from SQL), checked from the definition before any SQL runs."""
    concurrency = [definition.concurrency, *(s.concurrency for s in definition.steps)]
    rates = [definition.rate_limit, *(s.rate_limit for s in definition.steps)]
    for limit in concurrency:
        if limit is not None and limit.key_path:
            _check_concurrency_key(definition.slug, limit.key_path, value)
    for rate in rates:
        if rate is not None and rate.key_path:
            _check_concurrency_key(definition.slug, rate.key_path, value, RateLimitKeyError)
    for step in definition.steps:
        if step.step_type is StepType.MAP and not step.depends_on:
            if not isinstance(value, list | tuple):
                raise MapInputNotArrayError(definition.slug, step.slug, json_kind(value))
            return


def _check_concurrency_key(
    flow_slug: str,
    path: tuple[str, ...],
    value: Any,
    error: type[ConcurrencyKeyError] = ConcurrencyKeyError,
) -> None:
    """The key's value as PostgreSQL's ``#>`` finds it: an object member, or an array element
    for a digit part."""
    found = value
    for part in path:
        if isinstance(found, dict) and part in found:
            found = found[part]
        elif isinstance(found, list | tuple) and part.isdigit() and int(part) < len(found):
            found = found[int(part)]
        else:
            raise error(flow_slug, ".".join(path), "has no such key")
    if found is None or not isinstance(found, str | int | float | bool):
        raise error(flow_slug, ".".join(path), f"has {json_kind(found)} there")
