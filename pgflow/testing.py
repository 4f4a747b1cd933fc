"""Helpers for testing applications that use pgflow: throwaway databases, calling a step
directly, running a flow to completion in-process. No pytest here: the fixtures built on these
helpers are in :mod:`pgflow.pytest_plugin`, which pytest loads automatically.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import URL, Engine

from pgflow._db import create_engine
from pgflow._devserver import dev_server
from pgflow._task_groups import sole_exception
from pgflow.context import Context
from pgflow.dsl import Flow, definition_of
from pgflow.errors import InvalidDatabasePrefixError
from pgflow.schema import install

__all__ = [
    "call_step",
    "create_database",
    "database_name_prefix",
    "drop_database",
    "run_flow_inline",
    "temporary_database",
]

TEST_DATABASE_PREFIX = "pgflow_test_"
"""The default start of a throwaway database's name; ``PGFLOW_TEST_DATABASE_PREFIX`` (or the
pytest option ``--pgflow-db-prefix``) sets another."""

PREFIX_VARIABLE = "PGFLOW_TEST_DATABASE_PREFIX"

_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,50}")  # + 12 hex digits: within PostgreSQL's 63 bytes


def database_name_prefix(prefix: str | None = None) -> str:
    """``prefix`` if given, else ``$PGFLOW_TEST_DATABASE_PREFIX``, else ``pgflow_test_``;
    :class:`~pgflow.errors.InvalidDatabasePrefixError` if it would not make a plain database name
    (lower-case letters, digits and ``_``, not starting with a digit, at most 51 characters)."""
    chosen = prefix if prefix is not None else os.environ.get(PREFIX_VARIABLE) or None
    if chosen is None:
        return TEST_DATABASE_PREFIX
    if not _PREFIX.fullmatch(chosen):
        source = "the prefix" if prefix is not None else PREFIX_VARIABLE
        raise InvalidDatabasePrefixError(
            f"{source} {chosen!r} is not a test database prefix: use lower-case letters, digits "
            "and _ (not starting with a digit), at most 51 characters, e.g. myapp_test_"
        )
    return chosen


def _admin_connection(server: URL) -> psycopg.Connection[tuple[object, ...]]:
    conninfo = server.set(drivername="postgresql").render_as_string(hide_password=False)
    return psycopg.connect(conninfo, autocommit=True, connect_timeout=5)


def create_database(server: URL, name: str, *, template: str | None = None) -> URL:
    """Create database ``name`` on ``server`` (optionally as a copy of ``template``)."""
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template is not None:
        statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(template))
    with _admin_connection(server) as connection:
        connection.execute(statement)
    return server.set(database=name)


def drop_database(server: URL, name: str) -> None:
    """Drop database ``name``, disconnecting anyone still connected."""
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with _admin_connection(server) as connection:
        connection.execute(statement)


@contextmanager
def temporary_database(
    server: URL | None = None,
    *,
    template: str | None = None,
    install_schema: bool = False,
    prefix: str | None = None,
) -> Iterator[URL]:
    """A uniquely named database that is dropped afterwards: ``prefix`` (by default
    ``$PGFLOW_TEST_DATABASE_PREFIX``, else ``pgflow_test_``) and 12 hex digits."""
    name = f"{database_name_prefix(prefix)}{uuid.uuid4().hex[:12]}"
    server_url = server if server is not None else dev_server().url
    url = create_database(server_url, name, template=template)
    try:
        if install_schema:
            install(url)
        yield url
    finally:
        drop_database(server_url, name)


def call_step(
    flow: type[Flow],
    step_slug: str,
    input: Any,
    *,
    run_id: uuid.UUID | None = None,
    task_index: int = 0,
    attempt: int = 1,
    flow_input: Any = None,
) -> Any:
    """Call one step's handler directly, with a made-up :class:`Context` (no database).

    ``input`` is what the handler receives (flow input, ``{dep: output}`` or a map element);
    ``flow_input`` is what ``ctx.flow_input()`` returns. Async handlers are run to completion.
    For a ``@subflow`` step it calls the method and returns the child run's input.
    """
    import anyio  # noqa: PLC0415 - only call_step needs an event loop

    definition = definition_of(flow)
    slug = definition.step(step_slug).slug
    # A @subflow step's method computes its child's input: callable the same way.
    spec = {**flow.__pgflow_handlers__, **flow.__pgflow_subflows__}[slug]
    context = Context(
        run_id=run_id or uuid.uuid4(),
        flow_slug=definition.slug,
        step_slug=step_slug,
        task_index=task_index,
        attempt=attempt,
        known_flow_input=flow_input,
    )
    handler = getattr(flow(), spec.attribute)
    args = (input, context) if spec.takes_context else (input,)
    if spec.is_async:
        return anyio.run(lambda: handler(*args))
    return handler(*args)


def _with_subflows(flow: type[Flow]) -> list[type[Flow]]:
    """``flow`` and every flow class its subflow steps run, directly or through others."""
    found: list[type[Flow]] = []
    pending = [flow]
    while pending:
        current = pending.pop()
        if current in found:
            continue
        found.append(current)
        for klass in current.__mro__:
            for value in vars(klass).values():
                child = getattr(value, "child_class", None)
                if isinstance(child, type) and issubclass(child, Flow):
                    pending.append(child)
    return found


def run_flow_inline(
    flow: type[Flow],
    input: Any,
    database: Engine | URL | str,
    *,
    timeout: float = 30.0,
    fire_schedules: bool = False,
) -> Any:
    """Run ``flow`` to completion in this process through the real SQL and the real worker code,
    registering the flow first if it is missing. The flows its ``@subflow`` steps run (those
    given as classes, and theirs) are registered and served too. Returns the finished
    :class:`pgflow.results.Run` (raises :class:`pgflow.errors.RunFailedError` if it fails).

    The worker fires no schedules unless ``fire_schedules=True``: a test pointed at a shared
    development database must not start that database's scheduled runs."""
    import anyio  # noqa: PLC0415
    import anyio.to_thread  # noqa: PLC0415

    from pgflow.client import start_flow_and_wait  # noqa: PLC0415
    from pgflow.worker import Worker, WorkerOptions  # noqa: PLC0415

    engine = database if isinstance(database, Engine) else create_engine(database)
    options = WorkerOptions(poll_interval=0.2, shutdown_timeout=1, scheduler=fire_schedules)
    # The worker registers the flows it finds missing before it serves; the run starts then.
    worker = Worker(_with_subflows(flow), engine, options=options, compile_missing=True)

    async def main() -> Any:
        async with anyio.create_task_group() as group:
            await group.start(worker.serve)
            try:
                return await anyio.to_thread.run_sync(
                    lambda: start_flow_and_wait(engine, flow, input, timeout=timeout)
                )
            finally:
                worker.stop()

    try:
        return anyio.run(main)
    except BaseExceptionGroup as group:
        raise sole_exception(group) from None
    finally:
        if engine is not database:
            engine.dispose()
