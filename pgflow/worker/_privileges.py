"""What a worker's role must be able to do, checked before it claims anything, and how a
privilege refusal at record time is told apart from a refused output.

A worker that can open only some of its connections, or lacks a privilege that recording needs,
would claim tasks it can never record and spend their attempts; so start-up opens every
connection the worker holds and asks the server (``has_*_privilege``, which counts inherited
privileges) for each privilege in ``pgflow_python.access_needed('worker', its queues)``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import _db, _sql
from pgflow.errors import RecordingPrivilegeError, WorkerAccessError

WORKER_CONNECTIONS = ("claim", "report", "service", "heartbeat", "listen")
"""The connections a serving worker holds besides its engine's pool (pgflow.worker._postgres:
one per activity, so none waits for another); named ``pgflow-worker:<name>`` on the server."""

GRANT_HINT = (
    "as the role that owns the schema, run `pgflow db grant --worker {role}` "
    "(or SELECT pgflow_python.grant_access('{role}', 'worker')); see docs/deployment.md"
)
_LISTED = 12


def check_worker_access(
    engine: Engine, queues: Sequence[str], connections: Mapping[str, str] | None = None
) -> None:
    """Raise :class:`WorkerAccessError` listing every missing privilege and every connection
    that could not be opened; return quietly when the worker can do its work.

    ``connections``: the libpq connection string of each connection the worker will hold, by
    name (default: all of :data:`WORKER_CONNECTIONS` on the engine's server)."""
    problems: list[str] = []
    with engine.connect() as connection:
        # Held while probing: the engine's own connection counts against the same limits.
        facts = connection.execute(_sql.query("server_facts")).mappings().one()
        role, database = str(facts["role"]), str(facts["database"])
        try:
            rows = connection.execute(
                _sql.query("missing_privileges"), {"access": "worker", "queues": list(queues)}
            ).all()
        except sa.exc.ProgrammingError as exc:
            if recording_privilege_error(exc) is None:
                raise
            # Not even the check may run (e.g. no USAGE on schema pgflow_python).
            rows = []
            problems.append(f"missing privileges: {str(exc.orig).strip().splitlines()[0]}")
        connection.rollback()
        if rows:
            problems.append(_describe_missing(rows))
        if connections is None:
            connections = dict.fromkeys(WORKER_CONNECTIONS, _db.conninfo(engine.url))
        failure = _probe_connections(connections)
        if failure:
            problems.append(failure)
    if problems:
        raise WorkerAccessError(
            f'the worker cannot work as role "{role}" on database "{database}": '
            + "; ".join(problems)
            + ". Fix: "
            + GRANT_HINT.format(role=role)
            + (", and allow the role more connections" if failure else "")
        )


def _describe_missing(rows: Sequence[tuple[object, ...]]) -> str:
    by_object: dict[str, list[str]] = defaultdict(list)
    for kind, name, privilege in rows:
        by_object[f"{kind} {name}"].append(str(privilege))
    listed = [f"{target} ({', '.join(privileges)})" for target, privileges in by_object.items()]
    more = f" and {len(listed) - _LISTED} more" if len(listed) > _LISTED else ""
    return f"missing privileges on {len(listed)} objects: {', '.join(listed[:_LISTED])}{more}"


def _probe_connections(connections: Mapping[str, str]) -> str | None:
    """Open all the worker's connections at once (then close them): a role or server limit
    that lets only some of them open is found now, not after tasks are claimed."""
    opened: list[psycopg.Connection[tuple[object, ...]]] = []
    try:
        for name, conninfo in connections.items():
            try:
                opened.append(
                    psycopg.connect(
                        conninfo,
                        autocommit=True,
                        application_name=f"pgflow-worker:{name}",
                        connect_timeout=5,
                    )
                )
            except psycopg.OperationalError as exc:
                reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
                return (
                    f"it could open only {len(opened)} of the {len(connections)} "
                    f"connections a worker holds besides its engine's "
                    f"({', '.join(connections)}); connection {name!r} failed: {reason}"
                )
        return None
    finally:
        for connection in opened:
            connection.close()


def recording_privilege_error(exc: BaseException) -> RecordingPrivilegeError | None:
    """The privilege problem behind a failed report, or None for any other error.

    A refused privilege (SQLSTATE 42501) is the role's problem, not the task's: the outcome must
    be kept and retried (fenced reports are safe to repeat) until a grant fixes it, never
    recorded as the task's failure."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, psycopg.errors.InsufficientPrivilege):
        cause = cause.__cause__ or getattr(cause, "orig", None)
    if cause is None:
        return None
    reason = str(cause).strip().splitlines()[0] if str(cause).strip() else "permission denied"
    return RecordingPrivilegeError(
        f"the worker's role may not record task outcomes ({reason}); the outcome is kept and "
        "retried. Fix: " + GRANT_HINT.format(role="<worker role>")
    )
