"""Cancel, retry and resume a run: ``cancel_run``, ``retry_run``, ``resume_run`` (+ async twins).

Each takes a ``Session``, ``Connection`` or ``Engine`` (async: ``AsyncSession``,
``AsyncConnection``, ``AsyncEngine``) like ``start_flow``: with a Session or Connection the change
happens in the caller's transaction and takes effect when the caller commits.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from pgflow._binds import (
    AsyncBind,
    RunId,
    SyncBind,
    as_run_id,
    checked_text,
    connection_for,
    run_async,
)
from pgflow._sql import query
from pgflow.errors import InsufficientPrivilegeError, UnknownRunError
from pgflow.operations._results import (
    CancelOutcome,
    CancelResult,
    ResumeOutcome,
    ResumeResult,
    RetryOutcome,
    RetryResult,
)
from pgflow.results import RunStatus

_UNKNOWN = "unknown"


def cancel_run(bind: SyncBind, run_id: RunId, reason: str | None = None) -> CancelResult:
    """Cancel a started run: it ends ``failed`` and is marked cancelled with ``reason``.

    Its queued tasks will never run; workers running its tasks are told (an async handler is
    cancelled, a sync handler can poll ``ctx.cancelled``) and their late results are ignored.
    A run that already ended is left alone: the result says so (``outcome``), nothing is raised.
    :class:`UnknownRunError` if no run has this id.
    """
    run, reason = as_run_id(run_id), _checked_reason(reason)
    with connection_for(bind) as connection:
        return _cancel(connection, run, reason)


async def cancel_run_async(
    bind: AsyncBind, run_id: RunId, reason: str | None = None
) -> CancelResult:
    """:func:`cancel_run` for an async bind."""
    return await run_async(bind, _cancel, as_run_id(run_id), _checked_reason(reason))


def retry_run(bind: SyncBind, run_id: RunId) -> RetryResult:
    """Start a failed (or cancelled) run again from the beginning, as a new run of the same flow
    with the same input; the new run records ``restart_of_run_id``. A run is retried once: a
    second call returns the first retry (``outcome`` ``already_retried``)."""
    with connection_for(bind) as connection:
        return _retry(connection, as_run_id(run_id))


async def retry_run_async(bind: AsyncBind, run_id: RunId) -> RetryResult:
    """:func:`retry_run` for an async bind."""
    return await run_async(bind, _retry, as_run_id(run_id))


def resume_run(bind: SyncBind, run_id: RunId) -> ResumeResult:
    """Continue a failed (or cancelled) run in place, under the same run id: completed steps and
    map elements keep their outputs and do not run again; everything else is queued afresh,
    with its full ``max_attempts``."""
    with connection_for(bind) as connection:
        return _resume(connection, as_run_id(run_id))


async def resume_run_async(bind: AsyncBind, run_id: RunId) -> ResumeResult:
    """:func:`resume_run` for an async bind."""
    return await run_async(bind, _resume, as_run_id(run_id))


MAX_REASON_BYTES = 2000
"""A reason is a sentence for operators; it is copied into each cancelled task's error."""


def _checked_reason(reason: str | None) -> str | None:
    if reason is None:
        return None
    return checked_text("reason", reason, max_bytes=MAX_REASON_BYTES, empty_ok=True)


@contextlib.contextmanager
def operator_rights(action: str) -> Iterator[None]:
    """A refused privilege while operating runs says which role kind may (not a raw
    ``permission denied for table …``)."""
    try:
        yield
    except sa.exc.DBAPIError as exc:
        if not isinstance(exc.orig, psycopg.errors.InsufficientPrivilege):
            raise
        denied = str(exc.orig).strip().splitlines()[0]
        raise InsufficientPrivilegeError(
            f"the connected role may not {action} ({denied}). Fix: as the role that owns the "
            "schema, run `pgflow db grant --operator ROLE` (or SELECT "
            "pgflow_python.grant_access('ROLE', 'operator')); see docs/deployment.md"
        ) from exc


def _cancel(connection: Connection, run_id: RunId, reason: str | None) -> CancelResult:
    with operator_rights("cancel runs"):
        row = (
            connection.execute(query("ops_cancel_run"), {"run_id": run_id, "reason": reason})
            .mappings()
            .one()
        )
    run = as_run_id(run_id)
    if row["outcome"] == _UNKNOWN:
        raise UnknownRunError(run)
    return CancelResult(
        run_id=run,
        outcome=CancelOutcome(row["outcome"]),
        status=RunStatus(row["status"]),
        cancelled_at=row["cancelled_at"],
        tasks_cancelled=row["tasks_cancelled"],
    )


def _retry(connection: Connection, run_id: RunId) -> RetryResult:
    with operator_rights("retry runs"):
        row = connection.execute(query("ops_retry_run"), {"run_id": run_id}).mappings().one()
    run = as_run_id(run_id)
    if row["outcome"] == _UNKNOWN:
        raise UnknownRunError(run)
    return RetryResult(
        run_id=run,
        outcome=RetryOutcome(row["outcome"]),
        status=RunStatus(row["status"]),
        new_run_id=row["new_run_id"],
    )


def _resume(connection: Connection, run_id: RunId) -> ResumeResult:
    with operator_rights("resume runs"):
        row = connection.execute(query("ops_resume_run"), {"run_id": run_id}).mappings().one()
    run = as_run_id(run_id)
    if row["outcome"] == _UNKNOWN:
        raise UnknownRunError(run)
    return ResumeResult(
        run_id=run,
        outcome=ResumeOutcome(row["outcome"]),
        status=RunStatus(row["status"]),
        tasks_requeued=row["tasks_requeued"],
    )
