"""What every ``pgflow`` command shares: error reporting and exit codes, the common options, the
engine a command uses, and printing a result as text or JSON."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import click
import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import _db
from pgflow._logging import LOG_FORMATS, LOG_LEVELS
from pgflow._registered import require_registered
from pgflow.cli._render import to_json
from pgflow.errors import (
    BadOptionsError,
    DatabaseNotConfiguredError,
    DatabaseUnavailableError,
    FlowImportError,
    InvalidDatabaseURLError,
    PgflowError,
    PortInUseError,
)

# Documented in docs/installation.md and docs/deployment.md (what a supervisor does with each).
EXIT_PROBLEM = 1  # refused, or a problem (schema, flows, a database error)
# A configuration mistake that a restart cannot fix: bad options, an unparsable database URL,
# no database configured, a flow module that cannot be imported, a port already in use.
EXIT_USAGE = 2
EXIT_NO_DATABASE = 3  # the database does not answer: restart later

P = ParamSpec("P")
R = TypeVar("R")


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn pgflow errors into one line on stderr and a documented exit code."""

    @wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (
            InvalidDatabaseURLError,
            BadOptionsError,
            DatabaseNotConfiguredError,
            PortInUseError,
        ) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except FlowImportError as exc:
            click.echo(
                f"error: {exc}; flows are named module:Class or module, importable from the "
                "current directory (or PYTHONPATH)",
                err=True,
            )
            sys.exit(EXIT_USAGE)
        except DatabaseUnavailableError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_NO_DATABASE)
        except PgflowError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_PROBLEM)
        except (sa.exc.DBAPIError, psycopg.Error) as exc:
            click.echo(f"error: database error: {_database_error_line(exc)}", err=True)
            sys.exit(EXIT_PROBLEM)

    return wrapper


# undefined_table, undefined_function, invalid_schema_name: what a database without our schema
# (or with an older release's) answers.
_MISSING_SCHEMA_STATES = {"42P01", "42883", "3F000"}


def _database_error_line(exc: Exception) -> str:
    """The server's message without its LINE/caret context, with the fix when the schema is
    missing, so a database error stays one line."""
    orig = getattr(exc, "orig", exc)
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None)
    lines = str(orig).strip().splitlines()
    message = primary or (lines[0] if lines else type(orig).__name__)
    if getattr(orig, "sqlstate", None) in _MISSING_SCHEMA_STATES:
        message += (
            "; is the pgflow schema installed and up to date in this database? "
            "Run `pgflow db install` (or `alembic upgrade heads`)"
        )
    return message


database_url_option = click.option(
    "--database-url",
    envvar="DATABASE_URL",
    show_envvar=True,
    help="PostgreSQL URL, e.g. postgresql://postgres@127.0.0.1:5432/app",
)
read_url_option = click.option(
    "--read-url",
    envvar="PGFLOW_READ_URL",
    show_envvar=True,
    help="Read from this database instead, e.g. a streaming replica (actions still go to "
    "--database-url).",
)
log_format_option = click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    envvar="PGFLOW_LOG_FORMAT",
    show_envvar=True,
    help="Events as readable lines (console, the default) or one JSON object per line.",
)
log_level_option = click.option(
    "--log-level",
    type=click.Choice(tuple(LOG_LEVELS)),
    envvar="PGFLOW_LOG_LEVEL",
    show_envvar=True,
    help="Least severe events shown (default info).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


@contextmanager
def engine_for(database_url: str | None) -> Iterator[Engine]:
    """An engine for one command (no pool: a command runs a few statements and exits)."""
    engine = _db.create_engine(_db.url_from_env(database_url), poolclass=sa.pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def require_flows(engine: Engine, *slugs: str | None) -> None:
    """Refuse a ``--flow`` that names no registered flow (exit 1, with a "did you mean")."""
    wanted = [slug for slug in slugs if slug]
    if wanted:
        with engine.connect() as connection:
            require_registered(connection, wanted)


def finish(as_json: bool, result: Any, text: str, *, refused: bool = False) -> None:
    """Print ``result`` as JSON or ``text``; exit 1 when the command was refused."""
    click.echo(to_json(result) if as_json else text)
    if refused:
        sys.exit(EXIT_PROBLEM)


class _UsageErrorLine(click.ClickException):
    """A usage error as one line, like every other error of the command."""

    exit_code = EXIT_USAGE

    def show(self, file: object = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class OneLineUsageErrors(click.Group):
    """Click prints usage errors as a usage block, a hint and the error; ours are one line that
    names the command's --help. A command given without arguments still shows its help."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            raise _one_line(exc) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            raise _one_line(exc) from None


def _one_line(exc: click.UsageError) -> click.ClickException:
    if type(exc).__name__ == "NoArgsIsHelpError":  # click >= 8.2: its help is the message
        return exc
    message = exc.format_message().rstrip(".")
    if exc.ctx is not None:
        message += f" (see '{exc.ctx.command_path} --help')"
    return _UsageErrorLine(message)
