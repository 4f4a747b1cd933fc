"""Starting runs: ``start_flow`` and ``enqueue``, sync and async."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from pgflow import _tracing
from pgflow._binds import (
    AsyncBind,
    FlowRef,
    RunId,
    SyncBind,
    as_run_id,
    checked_text,
    connection_for,
    json_kind,
    resolve_flow,
    run_async,
)
from pgflow._registered import not_registered
from pgflow._sql import query
from pgflow.client._batched import execute_then
from pgflow.client._inputs import check_input_shape, encode_input
from pgflow.client._registered import check_definition_once
from pgflow.definition import FlowDefinition, FlowType
from pgflow.dsl import Job
from pgflow.errors import (
    MapInputNotArrayError,
    NotAJobError,
    PgflowError,
    RunExistsError,
)
from pgflow.flow_control import checked_priority

Delay = float | timedelta
Deadline = timedelta | datetime

_INT4_MAX = 2**31 - 1


def start_flow(
    bind: SyncBind,
    flow: FlowRef,
    input: Any,
    *,
    run_id: RunId | None = None,
    idempotency_key: str | None = None,
    deadline: Deadline | None = None,
    priority: int | None = None,
) -> uuid.UUID:
    """Start a run of ``flow`` with ``input``; return its ``run_id``.

    With a ``Session`` or ``Connection`` the run is created in the caller's transaction: it
    exists (and workers see it) only once the caller commits, and a rollback removes it. With an
    ``Engine`` it is committed before this returns.

    ``flow`` is a Flow class, its definition, or a slug. The input must be JSON; a flow that maps
    over its input needs a list. ``run_id`` chooses the id.

    ``idempotency_key``: the first start with this key for this flow starts a run; later ones
    (also concurrent ones, in other transactions) return that run's id and start nothing. The key
    is remembered until its run is pruned; a retry of the run takes it over.

    ``deadline`` (a ``timedelta`` from now, or an aware ``datetime``): if the run is still going
    then, it is cancelled as ``cancel_run`` would, with a reason saying the deadline passed
    (workers enforce it; docs/waiting.md). It replaces the flow's ``run_timeout`` for this run.

    ``priority`` (-32767..32767; default: the flow's ``priority``, else 0): among the ready
    tasks of the flow's queue, those of runs with a higher priority start first
    (docs/flow-control.md).
    """
    request = prepare_start(flow, input, run_id, idempotency_key, deadline, priority=priority)
    with connection_for(bind) as connection:
        return start_run(connection, request)


async def start_flow_async(
    bind: AsyncBind,
    flow: FlowRef,
    input: Any,
    *,
    run_id: RunId | None = None,
    idempotency_key: str | None = None,
    deadline: Deadline | None = None,
    priority: int | None = None,
) -> uuid.UUID:
    """:func:`start_flow` for an ``AsyncSession``, ``AsyncConnection`` or ``AsyncEngine``."""
    request = prepare_start(flow, input, run_id, idempotency_key, deadline, priority=priority)
    return await run_async(bind, start_run, request)


def enqueue(
    bind: SyncBind,
    job: type[Job] | str,
    input: Any,
    *,
    delay: Delay | None = None,
    run_id: RunId | None = None,
    idempotency_key: str | None = None,
    priority: int | None = None,
) -> uuid.UUID:
    """Start a run of a Job; return its ``run_id``. Transactions, ``idempotency_key`` and
    ``priority`` as for :func:`start_flow` (a job already enqueued with the key is returned,
    its delay kept).

    ``delay`` (seconds or a ``timedelta``, rounded up to whole seconds) keeps the job from
    starting until that long after this call: the job's task message is made invisible with
    ``pgmq.set_vt`` in the same transaction that creates it, so no worker can read it earlier.
    It replaces the job's ``start_delay`` for this run.
    """
    prepared = _prepare_job(job, input, delay, run_id, idempotency_key, priority=priority)
    with connection_for(bind) as connection:
        return _enqueue(connection, *prepared)


async def enqueue_async(
    bind: AsyncBind,
    job: type[Job] | str,
    input: Any,
    *,
    delay: Delay | None = None,
    run_id: RunId | None = None,
    idempotency_key: str | None = None,
    priority: int | None = None,
) -> uuid.UUID:
    """:func:`enqueue` for an ``AsyncSession``, ``AsyncConnection`` or ``AsyncEngine``."""
    prepared = _prepare_job(job, input, delay, run_id, idempotency_key, priority=priority)
    return await run_async(bind, _enqueue, *prepared)


@dataclass(frozen=True, slots=True)
class StartRequest:
    """A start checked as far as it can be without the database."""

    slug: str
    input: Any
    encoded_input: str
    run_id: uuid.UUID | None
    idempotency_key: str | None = None
    require_job: bool = False
    # The class (or definition) the caller named, checked against the stored flow once.
    definition: FlowDefinition | None = None
    deadline: Deadline | None = None
    priority: int | None = None


MAX_IDEMPOTENCY_KEY_BYTES = 1000
"""Keys are a primary key: PostgreSQL's btree takes about 2,700 bytes; a key should be an id."""


def prepare_start(
    flow: FlowRef,
    input: Any,
    run_id: RunId | None,
    idempotency_key: str | None = None,
    deadline: Deadline | None = None,
    *,
    priority: int | None = None,
) -> StartRequest:
    slug, definition = resolve_flow(flow)
    if priority is not None:
        checked_priority(priority, f"start of flow {slug!r}")
    if idempotency_key is not None:
        if run_id is not None:
            raise ValueError(
                "pass run_id or idempotency_key, not both: the key decides which run a start "
                "returns"
            )
        checked_text("idempotency_key", idempotency_key, max_bytes=MAX_IDEMPOTENCY_KEY_BYTES)
    encoded = encode_input(slug, input)
    if definition is not None:
        check_input_shape(definition, input)
    return StartRequest(
        slug,
        input,
        encoded,
        None if run_id is None else as_run_id(run_id),
        idempotency_key,
        definition=definition,
        deadline=_checked_deadline(deadline),
        priority=priority,
    )


def _checked_deadline(deadline: Deadline | None) -> Deadline | None:
    if deadline is None:
        return None
    if isinstance(deadline, timedelta):
        if not deadline > timedelta(0):
            raise ValueError(f"deadline must be a positive timedelta, got {deadline!r}")
        return deadline
    if isinstance(deadline, datetime):
        if deadline.tzinfo is None or deadline.utcoffset() is None:
            raise ValueError(
                f"deadline must be an aware datetime (with a time zone), got {deadline!r}; "
                "e.g. datetime.now(UTC) + timedelta(hours=1), or pass a timedelta"
            )
        if deadline <= datetime.now(UTC):
            raise ValueError(f"deadline {deadline.isoformat()} has already passed")
        return deadline
    raise TypeError(f"deadline must be a timedelta or a datetime, got {type(deadline).__name__}")


def _prepare_job(
    job: type[Job] | str,
    input: Any,
    delay: Delay | None,
    run_id: RunId | None,
    idempotency_key: str | None,
    *,
    priority: int | None = None,
) -> tuple[StartRequest, int | None]:
    slug, definition = resolve_flow(job)
    if definition is not None and definition.flow_type is not FlowType.JOB:
        raise NotAJobError(slug, str(definition.flow_type), registered=False)
    request = prepare_start(job, input, run_id, idempotency_key, priority=priority)
    # A bare slug: the database checks that it names a job.
    return replace(request, require_job=definition is None), _delay_seconds(delay)


def _delay_seconds(delay: Delay | None) -> int | None:
    if delay is None:
        return None
    seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
    if not 0 <= seconds <= _INT4_MAX:
        raise ValueError(f"delay must be between 0 and {_INT4_MAX} seconds, got {seconds:g}")
    # Rounded up: "not before" must hold; pgmq visibility is in whole seconds.
    return math.ceil(seconds)


def start_run(
    connection: Connection, request: StartRequest, *, then: str | None = None
) -> uuid.UUID:
    """The started run's id. ``then``: a parameterless named query sent with the start in one
    round trip (the waiter's LISTEN; see ``_batched``)."""
    return start_run_once(connection, request, then=then)[0]


def start_run_once(
    connection: Connection, request: StartRequest, *, then: str | None = None
) -> tuple[uuid.UUID, bool]:
    """``(run_id, created)``: ``created`` is false when an idempotency key found its run."""
    if request.definition is not None:
        check_definition_once(connection, request.definition)
    tracer = _tracing.current()
    if tracer is None:
        return _start_run(connection, request, {}, then)
    with tracer.start_flow(request.slug) as span:
        started = _start_run(connection, request, span.carrier(), then)
        span.started(started[0])
        return started


def _start_run(
    connection: Connection,
    request: StartRequest,
    trace_context: _tracing.Carrier,
    then: str | None = None,
) -> tuple[uuid.UUID, bool]:
    slug = request.slug
    params = {
        "flow_slug": slug,
        "input": request.encoded_input,
        "run_id": request.run_id,
        "idempotency_key": request.idempotency_key,
        "priority": request.priority,
        "require_job": request.require_job,
        "traceparent": trace_context.get("traceparent"),
        "tracestate": trace_context.get("tracestate"),
    }
    result = (
        connection.execute(query("client_start_flow"), params)
        if then is None
        else execute_then(connection, "client_start_flow", then, params)
    )
    row = result.mappings().one_or_none()
    if row is None:
        raise not_registered(connection, slug)
    if row["run_id"] is not None:
        started: uuid.UUID = row["run_id"]
        if request.deadline is not None and row["created"]:
            _set_deadline(connection, started, request.deadline)
        return started, bool(row["created"])
    if row["run_exists"] and request.run_id is not None:
        raise RunExistsError(request.run_id)
    if request.require_job and row["flow_type"] != "job":
        raise NotAJobError(slug, row["flow_type"], registered=True)
    if row["root_map_step"] is not None:
        raise MapInputNotArrayError(slug, row["root_map_step"], json_kind(request.input))
    raise PgflowError(f"pgflow.start_flow returned no run for flow {slug!r}")


def _set_deadline(connection: Connection, run_id: uuid.UUID, deadline: Deadline) -> None:
    at, seconds = (
        (None, deadline.total_seconds()) if isinstance(deadline, timedelta) else (deadline, None)
    )
    connection.execute(
        query("client_set_run_deadline"),
        {"run_id": run_id, "deadline_at": at, "deadline_seconds": seconds},
    )


def _enqueue(connection: Connection, request: StartRequest, delay_seconds: int | None) -> uuid.UUID:
    autocommit = getattr(connection.connection.dbapi_connection, "autocommit", False)
    if delay_seconds is not None and autocommit:
        # Each statement would commit on its own, and a worker could read the message between
        # the start and the delay.
        raise PgflowError(
            "enqueue(delay=...) needs a transaction, but this connection is in autocommit mode; "
            "pass the Engine, a Session, or a Connection without isolation_level='AUTOCOMMIT'"
        )
    run_id, created = start_run_once(connection, request)
    if delay_seconds is not None and created:
        connection.execute(
            query("client_delay_queued_tasks"),
            {"run_id": run_id, "delay_seconds": delay_seconds},
        )
    return run_id
