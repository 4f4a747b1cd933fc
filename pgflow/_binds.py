"""What every call of the library's API shares: the binds it takes (sync and async), run ids and
flow references. Private plumbing below the client, operations and schedules packages."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from pgflow._db import connect, connect_async
from pgflow.definition import FlowDefinition
from pgflow.dsl import Flow, definition_of

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
    """Run a sync function of a connection on an async bind (same transaction rules as
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
    """A run id given as a ``uuid.UUID`` or its text; anything else is refused before any SQL."""
    if isinstance(run_id, uuid.UUID):
        return run_id
    if not isinstance(run_id, str):
        raise TypeError(
            f"run_id must be a uuid.UUID or its text, got {type(run_id).__name__} {run_id!r}"
        )
    try:
        return uuid.UUID(run_id)
    except ValueError:
        raise ValueError(f"run_id must be a UUID, got {run_id[:100]!r}") from None


def checked_text(name: str, value: object, *, max_bytes: int, empty_ok: bool = False) -> str:
    """``value`` if PostgreSQL's text takes it within ``max_bytes`` of UTF-8; otherwise a clear
    error before any SQL runs, so the caller's transaction is never aborted by it."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value and not empty_ok:
        raise ValueError(f"{name} must not be empty")
    if "\x00" in value:
        raise ValueError(f"{name} must not contain a NUL character (PostgreSQL's text cannot)")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(
            f"{name} must not contain a lone surrogate (it is not a character; often text "
            "decoded with errors='surrogateescape')"
        ) from None
    if size > max_bytes:
        raise ValueError(f"{name} must be at most {max_bytes} bytes of UTF-8, got {size}")
    return value


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
