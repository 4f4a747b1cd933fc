"""``pgflow db install|status|grant|uninstall``: the schema."""

from __future__ import annotations

import sys

import click

from pgflow import _db
from pgflow.cli._common import EXIT_PROBLEM, database_url_option, reports_errors
from pgflow.errors import BadOptionsError
from pgflow.schema import PgmqMode, grant_access, install, status, uninstall


@click.group()
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
@reports_errors
def db_install(database_url: str | None, pgmq_mode: str) -> None:
    """Install (or adopt) pgmq, upstream pgflow SQL and our extension. Idempotent."""
    url = _db.url_from_env(database_url)
    report = install(url, pgmq_mode=None if pgmq_mode == "auto" else pgmq_mode)
    click.echo(report.render())


@db.command("status")
@database_url_option
@click.option("--check", is_flag=True, help="Exit 1 when anything is pending or wrong.")
@reports_errors
def db_status(database_url: str | None, check: bool) -> None:
    """Show what is installed: pgmq version and mode, upstream version, pending items."""
    url = _db.url_from_env(database_url)
    snapshot = status(url)
    click.echo(snapshot.render())
    if check and not snapshot.up_to_date:
        sys.exit(EXIT_PROBLEM)


@db.command("grant")
@database_url_option
@click.option("--worker", "workers", multiple=True, metavar="ROLE", help="Role workers run as.")
@click.option(
    "--client", "clients", multiple=True, metavar="ROLE", help="Role that starts flows, reads runs."
)
@click.option(
    "--operator",
    "operators",
    multiple=True,
    metavar="ROLE",
    help="Role that also cancels, resumes, retries and prunes runs (a dashboard with actions).",
)
@click.option(
    "--readonly",
    "readers",
    multiple=True,
    metavar="ROLE",
    help="Role that only reads (dashboards).",
)
@reports_errors
def db_grant(
    database_url: str | None,
    workers: tuple[str, ...],
    clients: tuple[str, ...],
    operators: tuple[str, ...],
    readers: tuple[str, ...],
) -> None:
    """Grant roles least-privilege access, including to flows added later. Idempotent.

    Run it as the role that applies migrations (usually the schema's owner): flows that role
    adds later are covered through its default privileges.
    """
    grants = [
        *((role, "worker") for role in workers),
        *((role, "client") for role in clients),
        *((role, "operator") for role in operators),
        *((role, "readonly") for role in readers),
    ]
    if not grants:
        raise BadOptionsError(
            "name at least one role: --worker ROLE, --client ROLE, --operator ROLE, --readonly ROLE"
        )
    for granted in grant_access(_db.url_from_env(database_url), grants):
        click.echo(granted.render())


@db.command("uninstall")
@database_url_option
@click.option("--yes", is_flag=True, help="Confirm: every flow, run and queue is deleted.")
@reports_errors
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
