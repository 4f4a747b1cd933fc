"""``pgflow dashboard``: serve the dashboard with uvicorn, refusing unsafe exposure."""

from __future__ import annotations

import socket
import sys

import click

from pgflow import _db
from pgflow.cli._common import EXIT_USAGE, database_url_option, read_url_option, reports_errors
from pgflow.errors import PortInUseError, UnsafeBindError


@click.command("dashboard")
@database_url_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True)
@click.option("--read-only", is_flag=True, help="Hide and refuse the run actions.")
@click.option(
    "--insecure",
    is_flag=True,
    help="Allow a non-loopback address without PGFLOW_DASHBOARD_TOKEN or basic auth.",
)
@read_url_option
@click.option(
    "--listen-url",
    envvar="PGFLOW_LISTEN_URL",
    show_envvar=True,
    help="A direct URL for the live updates' LISTEN, when --database-url goes through a "
    "transaction pooler (pool_mode=transaction); without it, pages update on reload.",
)
@reports_errors
def dashboard_command(
    *,
    database_url: str | None,
    host: str,
    port: int,
    read_only: bool,
    insecure: bool,
    read_url: str | None,
    listen_url: str | None,
) -> None:
    """Serve the web dashboard (needs the 'dashboard' extra)."""
    try:
        import uvicorn  # noqa: PLC0415 - the optional extra, loaded only when asked

        from pgflow import dashboard  # noqa: PLC0415
    except ImportError as exc:
        click.echo(
            f"error: the dashboard needs its extra: pip install 'pgflow-python[dashboard]' ({exc})",
            err=True,
        )
        sys.exit(EXIT_USAGE)
    url = _db.url_from_env(database_url)
    try:
        auth = dashboard.auth_from_environment()
    except ValueError as exc:
        raise UnsafeBindError(str(exc)) from None
    if auth is None and not dashboard.is_loopback(host) and not insecure:
        raise UnsafeBindError(
            f"refusing to serve the dashboard on {host} without authentication: set "
            f"{dashboard.TOKEN_ENV} (a bearer token, 16+ characters) or {dashboard.USERNAME_ENV} "
            f"and {dashboard.PASSWORD_ENV}, or pass --insecure if something in front of it "
            "already authenticates"
        )
    engine = _db.create_engine(url, pool_pre_ping=True)
    _db.connect(engine).close()  # refuse to start on a database that does not answer
    reads = None
    if read_url is not None:
        reads = _db.create_engine(_db.normalize_url(read_url), pool_pre_ping=True)
        _db.connect(reads).close()
    app = dashboard.create_app(
        engine, read_only=read_only, auth=auth, read_engine=reads, listen_url=listen_url
    )
    listening = _bind(host, port)
    click.echo(f"pgflow dashboard on http://{_host(host)}:{port}/ ({_db.display_url(url)})")
    config = uvicorn.Config(app, host=host, port=port, log_level="info", access_log=False)
    uvicorn.Server(config).run(sockets=[listening])


def _host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before saying where the dashboard is: a busy port is a
    configuration mistake (exit 2 naming --port), not something a restart fixes."""
    listening = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except OSError as exc:
        listening.close()
        raise PortInUseError(
            f"cannot serve the dashboard on {_host(host)}:{port}: {exc.strerror or exc}; "
            "pass another --port (or stop what uses this one)"
        ) from None
    return listening
