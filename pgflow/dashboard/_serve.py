"""``pgflow dashboard``: serve the dashboard with uvicorn, refusing unsafe exposure."""

from __future__ import annotations

from sqlalchemy.engine import URL

from pgflow import _db
from pgflow.dashboard import create_app
from pgflow.dashboard._security import (
    PASSWORD_ENV,
    TOKEN_ENV,
    USERNAME_ENV,
    auth_from_environment,
    is_loopback,
)
from pgflow.errors import UnsafeBindError


def serve(
    url: URL, *, host: str, port: int, read_only: bool, insecure: bool, log_level: str = "info"
) -> None:
    import uvicorn  # noqa: PLC0415 - only the serving command needs it

    try:
        auth = auth_from_environment()
    except ValueError as exc:
        raise UnsafeBindError(str(exc)) from None
    if auth is None and not is_loopback(host) and not insecure:
        raise UnsafeBindError(
            f"refusing to serve the dashboard on {host} without authentication: set "
            f"{TOKEN_ENV} (a bearer token, 16+ characters) or {USERNAME_ENV} and {PASSWORD_ENV}, "
            "or pass --insecure if something in front of it already authenticates"
        )
    engine = _db.create_engine(url, pool_pre_ping=True)
    _db.connect(engine).close()  # refuse to start on a database that does not answer
    app = create_app(engine, read_only=read_only, auth=auth)
    shown = f"[{host}]" if ":" in host else host
    print(f"pgflow dashboard on http://{shown}:{port}/ ({_db.display_url(url)})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
