"""Exceptions raised by pgflow. Every error a user can act on says what to do next."""

from __future__ import annotations


class PgflowError(Exception):
    """Base class of every error raised by pgflow."""


class DatabaseUnavailableError(PgflowError):
    """The PostgreSQL server could not be reached (or no server was configured)."""


class InvalidDatabaseURLError(PgflowError, ValueError):
    """A database URL that cannot be parsed or does not name PostgreSQL."""


class SchemaError(PgflowError):
    """The database schema is missing, incompatible, or cannot be installed."""


class SchemaFilesError(SchemaError):
    """The SQL files shipped with the package are missing or do not match their pins."""


class InsufficientPrivilegeError(SchemaError):
    """The connected role may not make the changes the installer needs."""


class IncompatibleSchemaError(SchemaError):
    """The database holds a pgflow schema this version cannot adopt (older, newer or modified)."""


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
