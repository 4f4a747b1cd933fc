"""Every exception pgflow raises, in one module. Each message says what to do next, and is built
from the fields the exception carries (``flow_slug``, ``run_id``, ...), so code can act on them.

The Alembic plugin's own errors are in :mod:`alembic_pgflow.errors`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from pgflow.results import Run, TaskFailure


class PgflowError(Exception):
    """Base class of every error raised by pgflow."""


# Defining flows


class FlowDefinitionError(PgflowError, ValueError):
    """A flow or job definition that pgflow would reject; the message says what to change."""


class FlowImportError(PgflowError):
    """A reference that does not name an importable Flow/Job class, definition or module."""


class BadOptionsError(PgflowError):
    """Options accepted one by one that do not work together (the CLI names them as flags)."""


# The database and the schema


class DatabaseUnavailableError(PgflowError):
    """The PostgreSQL server could not be reached (or no server was configured)."""


class PortInUseError(PgflowError, OSError):
    """A server (``pgflow dashboard``, the worker's metrics endpoint) cannot bind its port."""


class DatabaseNotConfiguredError(DatabaseUnavailableError):
    """No database URL given (no ``DATABASE_URL``, no ``--database-url``): a configuration
    mistake, not an outage (the CLI exits 2, not 3)."""


class InvalidDatabaseURLError(PgflowError, ValueError):
    """A database URL that cannot be parsed or does not name PostgreSQL."""


class InvalidDatabasePrefixError(PgflowError, ValueError):
    """A prefix for throwaway test databases (``PGFLOW_TEST_DATABASE_PREFIX``,
    ``--pgflow-db-prefix``) that would not make a plain PostgreSQL database name."""


class SchemaError(PgflowError):
    """The database schema is missing, incompatible, or cannot be installed."""


class SchemaFilesError(SchemaError):
    """The SQL files shipped with the package are missing or do not match their pins."""


class InsufficientPrivilegeError(SchemaError):
    """The connected role may not make the changes the installer needs."""


class WorkerAccessError(InsufficientPrivilegeError):
    """The worker's role lacks privileges it needs, or cannot open every connection the worker
    holds; raised at start-up, before ``worker.started``, with each missing item listed."""


class RecordingPrivilegeError(InsufficientPrivilegeError):
    """Recording a task outcome was refused for lack of a privilege (SQLSTATE 42501).

    Not the task's fault: the outcome is kept and retried until a grant fixes the role."""


class IncompatibleSchemaError(SchemaError):
    """The database holds a pgflow schema this version cannot adopt (older, newer or modified)."""


# Workers


class FlowNotReadyError(PgflowError):
    """A flow the worker should serve is missing from the database, or a flow class (served by
    a worker or named by ``start_flow``/``enqueue``) has another shape than the stored flow."""


class ConnectionLost(PgflowError):
    """A worker store could not reach the database, or the connection broke during the call
    (see :mod:`pgflow.worker._store`). For a call that changes data the outcome is unknown: it
    may or may not have committed."""


# Starting, reading and waiting for runs


class FlowNotRegisteredError(PgflowError, LookupError):
    """The flow is not in ``pgflow.flows`` of this database."""

    def __init__(self, flow_slug: str, *, similar: Sequence[str] = ()) -> None:
        self.flow_slug = flow_slug
        self.similar = tuple(similar)
        """Registered slugs close to ``flow_slug`` (a typo's likely meaning), closest first."""
        hint = f" (did you mean {' or '.join(map(repr, self.similar))}?)" if similar else ""
        super().__init__(
            f"flow {flow_slug!r} is not registered in this database{hint}. Register it with a "
            "migration (`alembic revision --autogenerate`, then `alembic upgrade heads`), or "
            "run the SQL printed by `pgflow compile your.module:YourFlow`; also check that the "
            "database URL points at the database your migrations ran on."
        )


class FlowInputError(PgflowError, ValueError):
    """The flow input cannot be used for this flow."""


class ConcurrencyKeyError(FlowInputError):
    """The flow has a concurrency limit keyed on a part of the input that is missing or not a
    string, number or boolean (docs/flow-control.md). Nothing was started."""

    limit_kind = "concurrency limit"

    def __init__(self, flow_slug: str, key: str, problem: str) -> None:
        self.flow_slug = flow_slug
        self.key = key
        super().__init__(
            f"flow {flow_slug!r} has a {self.limit_kind} keyed on {key!r}, but the input "
            f"{problem}; the key's value must be a string, number or boolean"
        )


class RateLimitKeyError(ConcurrencyKeyError):
    """The same for a rate limit's key (a ``ConcurrencyKeyError`` too: catch either)."""

    limit_kind = "rate limit"


class InvalidPriorityError(FlowDefinitionError):
    """A priority that is not a whole number from -32767 to 32767 (docs/flow-control.md),
    given to a flow, a job, ``start_flow`` or ``enqueue``. Nothing was started."""


class InputNotJSONError(FlowInputError, TypeError):
    """The input is not JSON (raised before the database is touched)."""

    def __init__(self, flow_slug: str, problem: str, fix: str) -> None:
        self.flow_slug = flow_slug
        self.problem = problem
        super().__init__(f"input for flow {flow_slug!r} is not {problem}; {fix}")


class MapInputNotArrayError(FlowInputError):
    """The flow maps over its input (a root map step), so the input must be a JSON array."""

    def __init__(self, flow_slug: str, step_slug: str, got: str) -> None:
        self.flow_slug = flow_slug
        self.step_slug = step_slug
        super().__init__(
            f"flow {flow_slug!r} maps over its input in step {step_slug!r}, so the input must "
            f"be a JSON array (a list), got {got}. Pass a list, e.g. [item, ...]."
        )


class NotAJobError(PgflowError, TypeError):
    """``enqueue`` was given a flow that is not a Job. ``registered`` says whether the database
    (rather than the class) said so."""

    def __init__(self, flow_slug: str, flow_type: str, *, registered: bool) -> None:
        self.flow_slug = flow_slug
        self.flow_type = flow_type
        if registered:
            message = (
                f"flow {flow_slug!r} is registered as a {flow_type}, not a job; start it with "
                "start_flow() instead of enqueue()"
            )
        else:
            message = (
                f"{flow_slug!r} is a {flow_type}, not a Job; start it with start_flow() (enqueue "
                "is for Job classes: class MyJob(Job): def perform(self, input, ctx): ...)"
            )
        super().__init__(message)


class RunNotFoundError(PgflowError, LookupError):
    """No run has this id, or a prefix given for one matches no run or several."""


class RunExistsError(PgflowError):
    """A run with the requested ``run_id`` already exists."""

    def __init__(self, run_id: uuid.UUID) -> None:
        self.run_id = run_id
        super().__init__(
            f"a run with id {run_id} already exists; pass a new run_id (or none, for a random one)"
        )


class UnknownRunError(PgflowError, LookupError):
    """No run with this id is visible (it does not exist, or its transaction did not commit)."""

    def __init__(self, run_id: uuid.UUID) -> None:
        self.run_id = run_id
        super().__init__(
            f"run {run_id} does not exist in this database. If it was started with a Session or "
            "Connection, commit that transaction first: until then no other connection sees it."
        )


class RunFailedError(PgflowError):
    """The run ended ``failed``; ``step_slug`` and ``error_message`` say where and why, and
    ``failure`` is the failed attempt's record (with its ``traceback``) when a Python worker ran
    it. The message ends with that traceback."""

    def __init__(
        self,
        run: Run,
        *,
        step_slug: str | None,
        error_message: str | None,
        task_index: int | None = None,
        attempts: int | None = None,
        failure: TaskFailure | None = None,
    ) -> None:
        self.run = run
        self.run_id = run.run_id
        self.step_slug = step_slug
        self.error_message = error_message
        self.task_index = task_index
        self.attempts = attempts
        self.failure = failure
        if step_slug is None:
            detail = "no failed step is recorded (was the run cancelled?)"
        else:
            where = f"step {step_slug!r}"
            if task_index is not None and task_index > 0:
                where += f" (task {task_index})"
            tries = f" after {attempts} attempt{'s' * (attempts != 1)}" if attempts else ""
            detail = f"{where} failed{tries}: {error_message or 'no error message'}"
            if failure is not None and not failure.retryable:
                detail += " (not retryable)"
            if failure is not None and failure.traceback:
                detail += f"\n\nThe handler's traceback:\n{failure.traceback.rstrip()}"
        super().__init__(f"run {run.run_id} of flow {run.flow_slug!r} failed: {detail}")

    @property
    def traceback(self) -> str | None:
        """The failed attempt's traceback as the worker recorded it (``None``: not recorded)."""
        return None if self.failure is None else self.failure.traceback


class RunCancelledError(RunFailedError):
    """The run was cancelled (``cancel_run``); ``reason`` is the reason given, if any."""

    def __init__(self, run: Run) -> None:
        self.reason = run.cancel_reason
        super().__init__(run, step_slug=None, error_message=run.cancel_reason)
        because = f": {run.cancel_reason}" if run.cancel_reason else ""
        self.args = (f"run {run.run_id} of flow {run.flow_slug!r} was cancelled{because}",)


class RunTimeoutError(PgflowError, TimeoutError):
    """The run did not finish within the timeout; it keeps running in the database."""

    def __init__(self, run: Run, timeout: float) -> None:
        self.run = run
        self.run_id = run.run_id
        self.timeout = timeout
        super().__init__(
            f"run {run.run_id} of flow {run.flow_slug!r} is still {run.status} after "
            f"{timeout:g} s; it goes on in the database. Is a worker serving flow "
            f"{run.flow_slug!r} (`pgflow run-worker`)? Wait again with wait_for_run(), or pass a "
            "larger timeout."
        )


# Signals (wait steps, docs/waiting.md)


class SignalError(PgflowError):
    """A signal that was not applied; nothing changed in the database."""


class SignalOutputNotJSONError(SignalError, TypeError):
    """The output of a signal is not JSON (raised before the database is touched)."""

    def __init__(self, step_slug: str, problem: str) -> None:
        self.step_slug = step_slug
        super().__init__(
            f"the output signalled to step {step_slug!r} is not JSON ({problem}); use dict, "
            "list, str, int, float, bool and None only"
        )


class NotAWaitStepError(SignalError, LookupError):
    """The run's flow has no such step (``known_step`` false), or the step runs a handler:
    only a ``@wait_step`` takes signals."""

    def __init__(self, run_id: uuid.UUID, flow_slug: str, step_slug: str, *, known_step: bool):
        self.run_id = run_id
        self.flow_slug = flow_slug
        self.step_slug = step_slug
        self.known_step = known_step
        what = "is not a wait step (it runs a handler)" if known_step else "does not exist"
        super().__init__(
            f"step {step_slug!r} of flow {flow_slug!r} {what}; only steps declared with "
            f"@wait_step take signals (run {run_id})"
        )


class SignalTooLateError(SignalError):
    """The run has ended, or the step no longer waits (it timed out, was skipped or failed);
    ``run_status`` and ``step_status`` say which. A repeated signal is not an error: it is
    reported as ``already_signalled``."""

    def __init__(
        self, run_id: uuid.UUID, step_slug: str, run_status: str, step_status: str
    ) -> None:
        self.run_id = run_id
        self.step_slug = step_slug
        self.run_status = run_status
        self.step_status = step_status
        if run_status != "started":
            why = f"the run is {run_status}" + (
                " (resume_run it to wait again)" if run_status == "failed" else ""
            )
        else:
            why = f"the step is {step_status} and no longer waits (did its timeout pass?)"
        super().__init__(
            f"signal to step {step_slug!r} of run {run_id} came too late: {why}; nothing changed"
        )


# The dashboard


class UnsafeBindError(PgflowError):
    """Binding a non-loopback address with no authentication configured."""


# Schedules


class ScheduleError(PgflowError):
    """A schedule operation that cannot be done; the message says why and what to do."""


class InvalidScheduleError(ScheduleError, ValueError):
    """A schedule declaration pgflow rejects: bad cron expression, unknown time zone, bad input."""


class ScheduleNotFoundError(ScheduleError, LookupError):
    """No schedule has the given name."""


class WorkerCrashedError(PgflowError):
    """A worker stopped serving without being asked to (its ``__cause__`` says why).

    The process should exit non-zero and be restarted by its supervisor; ``worker.crashed`` was
    logged before this was raised.
    """


class NonRetryableError(Exception):
    """Raise it (or a subclass) in a step handler to fail the step at once, whatever attempts
    remain: the run fails as when the last attempt fails. For inputs that can never succeed::

        if order["total"] < 0:
            raise NonRetryableError(f"order {order['id']} has a negative total")

    The error is recorded like any other (type, message, traceback). Not a :class:`PgflowError`:
    your handlers raise it, pgflow does not.
    """
