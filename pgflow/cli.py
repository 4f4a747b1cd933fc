"""The ``pgflow`` command line.

Exit codes: 0 ok; 1 refused or a problem (schema, flows, database error); 2 usage (bad options,
an unparsable database URL); 3 no database. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, ParamSpec, TypeVar

import click
import psycopg
import sqlalchemy as sa

from pgflow import _db, telemetry
from pgflow._loading import flow_classes, load_definitions
from pgflow._logging import LOG_FORMATS, LOG_LEVELS, configure_logging
from pgflow._worker_cli import options_from, worker_options
from pgflow.compiler import compile_flow
from pgflow.errors import (
    BadOptionsError,
    DatabaseUnavailableError,
    InvalidDatabaseURLError,
    PgflowError,
)
from pgflow.operations._cli import add_commands as add_operations_commands
from pgflow.schedules._cli import schedules_command
from pgflow.schema import PgmqMode, grant_access, install, status, uninstall

EXIT_SCHEMA_PROBLEM = 1
EXIT_USAGE = 2
EXIT_NO_DATABASE = 3


P = ParamSpec("P")
R = TypeVar("R")


def _reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn pgflow errors into one line on stderr and a documented exit code."""

    @wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (InvalidDatabaseURLError, BadOptionsError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except DatabaseUnavailableError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_NO_DATABASE)
        except PgflowError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_SCHEMA_PROBLEM)
        except (sa.exc.DBAPIError, psycopg.Error) as exc:
            click.echo(f"error: database error: {_database_error_line(exc)}", err=True)
            sys.exit(EXIT_SCHEMA_PROBLEM)

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


class _UsageErrorLine(click.ClickException):
    """A usage error as one line, like every other error of the command."""

    exit_code = EXIT_USAGE

    def show(self, file: object = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class _OneLineUsageErrors(click.Group):
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


@click.group(cls=_OneLineUsageErrors)
@click.version_option(package_name="pgflow-python")
@log_format_option
@log_level_option
@click.pass_context
def main(context: click.Context, log_format: str | None, log_level: str | None) -> None:
    """pgflow for Python: Postgres-native workflows.

    Every command logs to standard error; `pgflow --log-format json <command>` sets the format.
    """
    settings = {"log_format": log_format or "console", "level": log_level or "info"}
    context.obj = settings
    configure_logging(settings["log_format"], settings["level"])


@main.group()
def db() -> None:
    """Install and inspect the pgflow schema."""


@db.command("install")
@database_url_option
@click.option(
    "--pgmq-mode",
    type=click.Choice(["auto", *(m.value for m in PgmqMode)]),
    default="auto",
    show_default=True,
    help="How to install pgmq when it is missing (auto picks the best available).",
)
@_reports_errors
def db_install(database_url: str | None, pgmq_mode: str) -> None:
    """Install (or adopt) pgmq, upstream pgflow SQL and our extension. Idempotent."""
    url = _db.url_from_env(database_url)
    report = install(url, pgmq_mode=None if pgmq_mode == "auto" else pgmq_mode)
    click.echo(report.render())


@db.command("status")
@database_url_option
@click.option("--check", is_flag=True, help="Exit 1 when anything is pending or wrong.")
@_reports_errors
def db_status(database_url: str | None, check: bool) -> None:
    """Show what is installed: pgmq version and mode, upstream version, pending items."""
    url = _db.url_from_env(database_url)
    snapshot = status(url)
    click.echo(snapshot.render())
    if check and not snapshot.up_to_date:
        sys.exit(EXIT_SCHEMA_PROBLEM)


@db.command("grant")
@database_url_option
@click.option("--worker", "workers", multiple=True, metavar="ROLE", help="Role workers run as.")
@click.option(
    "--client", "clients", multiple=True, metavar="ROLE", help="Role that starts flows, reads runs."
)
@click.option(
    "--readonly",
    "readers",
    multiple=True,
    metavar="ROLE",
    help="Role that only reads (dashboards).",
)
@_reports_errors
def db_grant(
    database_url: str | None,
    workers: tuple[str, ...],
    clients: tuple[str, ...],
    readers: tuple[str, ...],
) -> None:
    """Grant roles least-privilege access, including to flows added later. Idempotent.

    Run it as the role that applies migrations (usually the schema's owner): flows that role
    adds later are covered through its default privileges.
    """
    grants = [
        *((role, "worker") for role in workers),
        *((role, "client") for role in clients),
        *((role, "readonly") for role in readers),
    ]
    if not grants:
        raise BadOptionsError(
            "name at least one role: --worker ROLE, --client ROLE, --readonly ROLE"
        )
    for granted in grant_access(_db.url_from_env(database_url), grants):
        click.echo(granted.render())


@db.command("uninstall")
@database_url_option
@click.option("--yes", is_flag=True, help="Confirm: every flow, run and queue is deleted.")
@_reports_errors
def db_uninstall(database_url: str | None, yes: bool) -> None:
    """Remove what `pgflow db install` installed; keep what it adopted from other tooling."""
    url = _db.url_from_env(database_url)
    if not yes:
        raise BadOptionsError(
            f"pgflow db uninstall deletes every flow, run and queue in {_db.display_url(url)}; "
            "run it again with --yes to do it"
        )
    if uninstall(url):
        click.echo("pgflow schema removed (what other tooling installed is kept)")
    else:
        click.echo(f"nothing to remove: pgflow is not installed in {_db.display_url(url)}")


@main.command("compile")
@click.argument("references", nargs=-1, required=True)
@_reports_errors
def compile_command(references: tuple[str, ...]) -> None:
    """Print the SQL that registers flows: REFERENCES are module:Class or module.

    The output is the same text as the TypeScript compiler's, for teams that manage SQL by hand.
    """
    # Like other app runners, resolve references against the working directory.
    sys.path.insert(0, os.getcwd())
    for definition in load_definitions(*references):
        click.echo(f"-- flow {definition.slug}")
        for statement in compile_flow(definition):
            click.echo(statement)


@main.command("run-worker")
@click.argument("references", nargs=-1, required=True)
@database_url_option
@worker_options
@log_format_option
@log_level_option
@click.option(
    "--otel",
    is_flag=True,
    help="OpenTelemetry spans and metrics through the global providers (e.g. set up by "
    "opentelemetry-instrument); needs pgflow-python[otel].",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics on this port (/metrics); implies --otel for metrics.",
)
@click.option(
    "--metrics-host",
    default="0.0.0.0",  # noqa: S104 - scraped from outside the container
    show_default=True,
    help="Address the metrics endpoint binds.",
)
@click.option("--compile-missing", is_flag=True, help="Development: register missing flows.")
@_reports_errors
def run_worker(
    *,
    references: tuple[str, ...],
    database_url: str | None,
    log_format: str | None,
    log_level: str | None,
    otel: bool,
    metrics_port: int | None,
    metrics_host: str,
    compile_missing: bool,
    **worker_settings: Any,
) -> None:
    """Run a worker for flows: REFERENCES are module:Class or module (all its flows).

    Every worker option can also be set as an environment variable (PGFLOW_CONCURRENCY=20).
    """
    from pgflow.dsl import Flow  # noqa: PLC0415
    from pgflow.worker import Worker  # noqa: PLC0415

    if log_format or log_level:  # also accepted after the command name
        settings = click.get_current_context().find_root().obj
        configure_logging(log_format or settings["log_format"], log_level or settings["level"])
    sys.path.insert(0, os.getcwd())
    classes: list[type[Flow]] = []
    for reference in references:
        classes += flow_classes(reference)
    options = options_from(worker_settings)
    url = _db.url_from_env(database_url)
    if otel or metrics_port is not None:
        _instrument(url, metrics_port, metrics_host)
    worker = Worker(classes, url, compile_missing=compile_missing, options=options)
    worker.run()


def _instrument(url: sa.URL, metrics_port: int | None, metrics_host: str) -> None:
    try:
        from pgflow import otel  # noqa: PLC0415 - the optional extra, loaded only when asked
    except ImportError as exc:
        raise click.UsageError(str(exc)) from None
    meter_provider = None
    if metrics_port is not None:
        try:
            meter_provider = otel.serve_prometheus(metrics_port, addr=metrics_host)
        except OSError as exc:
            raise click.UsageError(
                f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc}"
            ) from None
        telemetry.emit("metrics.serving", url=f"http://{metrics_host}:{metrics_port}/metrics")
    otel.instrument(meter_provider=meter_provider, database=url)


@main.command("dashboard")
@database_url_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--read-only", is_flag=True, help="Hide and refuse the run actions.")
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow a non-loopback address without PGFLOW_DASHBOARD_TOKEN or basic auth.",
)
@_reports_errors
def dashboard(
    *, database_url: str | None, host: str, port: int, read_only: bool, insecure: bool
) -> None:
    """Serve the web dashboard (needs the 'dashboard' extra)."""
    try:
        from pgflow.dashboard._serve import serve  # noqa: PLC0415
    except ImportError as exc:
        click.echo(
            f"error: the dashboard needs its extra: pip install 'pgflow-python[dashboard]' ({exc})",
            err=True,
        )
        sys.exit(2)
    serve(
        _db.url_from_env(database_url), host=host, port=port, read_only=read_only, insecure=insecure
    )


main.add_command(schedules_command(_reports_errors, database_url_option))
add_operations_commands(
    main, reports_errors=_reports_errors, database_url_option=database_url_option
)
