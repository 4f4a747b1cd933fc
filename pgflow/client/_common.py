"""What every client call shares: binds, flow references, input encoding."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from pgflow._db import connect, connect_async
from pgflow.definition import FlowDefinition, StepType
from pgflow.dsl import Flow, definition_of
from pgflow.errors import InputNotJSONError, MapInputNotArrayError

SyncBind = Session | Connection | Engine
AsyncBind = AsyncSession | AsyncConnection | AsyncEngine
FlowRef = type[Flow] | FlowDefinition | str
"""A Flow/Job class, its definition, or a flow slug."""
RunId = uuid.UUID | str

P = ParamSpec("P")
T = TypeVar("T")


@contextmanager
def connection_for(bind: SyncBind) -> Iterator[Connection]:
    """The caller's transaction for a Session or Connection (nothing is committed here); an
    engine gets a transaction of its own that commits when the block ends."""
    if isinstance(bind, Session):
        yield bind.connection()
    elif isinstance(bind, Connection):
        yield bind
    elif isinstance(bind, Engine):
        with connect(bind) as connection, connection.begin():
            yield connection
    else:
        raise TypeError(f"expected a Session, Connection or Engine, got {type(bind).__name__}")


async def run_async(
    bind: AsyncBind,
    function: Callable[Concatenate[Connection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """Run a sync client function on an async bind (same transaction rules as
    :func:`connection_for`); SQLAlchemy's greenlet bridge makes its statements non-blocking."""
    if isinstance(bind, AsyncSession):
        connection = await bind.connection()
        return await connection.run_sync(function, *args, **kwargs)
    if isinstance(bind, AsyncConnection):
        return await bind.run_sync(function, *args, **kwargs)
    if isinstance(bind, AsyncEngine):
        connection = await connect_async(bind)
        try:
            async with connection.begin():
                return await connection.run_sync(function, *args, **kwargs)
        finally:
            await connection.close()
    raise TypeError(
        f"expected an AsyncSession, AsyncConnection or AsyncEngine, got {type(bind).__name__}"
    )


def engine_of(bind: SyncBind) -> Engine:
    """The engine behind a bind: waiting needs connections of its own, outside the caller's
    transaction."""
    if isinstance(bind, Engine):
        return bind
    if isinstance(bind, Connection):
        return bind.engine
    if isinstance(bind, Session):
        inner = bind.get_bind()
        return inner if isinstance(inner, Engine) else inner.engine
    raise TypeError(f"expected a Session, Connection or Engine, got {type(bind).__name__}")


def async_engine_of(bind: AsyncBind) -> AsyncEngine:
    if isinstance(bind, AsyncEngine):
        return bind
    if isinstance(bind, AsyncConnection):
        return bind.engine
    if isinstance(bind, AsyncSession):
        if isinstance(bind.bind, AsyncEngine | AsyncConnection):
            return async_engine_of(bind.bind)
        inner = bind.get_bind()
        # A proxy around the session's own sync engine: same pool, same URL.
        return AsyncEngine(inner if isinstance(inner, Engine) else inner.engine)
    raise TypeError(
        f"expected an AsyncSession, AsyncConnection or AsyncEngine, got {type(bind).__name__}"
    )


def resolve_flow(flow: FlowRef) -> tuple[str, FlowDefinition | None]:
    """``(slug, definition)``; a bare slug has no definition, so the database checks alone."""
    if isinstance(flow, str):
        return flow, None
    definition = definition_of(flow)
    return definition.slug, definition


def as_run_id(run_id: RunId) -> uuid.UUID:
    return run_id if isinstance(run_id, uuid.UUID) else uuid.UUID(run_id)


def json_kind(value: Any) -> str:
    """The JSON name of a Python value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object (dict)"
    return f"{type(value).__name__}"


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
    """Upstream's root map rule, checked from the definition before any SQL runs."""
    for step in definition.steps:
        if step.step_type is StepType.MAP and not step.depends_on:
            if not isinstance(value, list | tuple):
                raise MapInputNotArrayError(definition.slug, step.slug, json_kind(value))
            return
