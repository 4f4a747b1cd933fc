"""A web dashboard for pgflow: flows, runs, their DAGs and workers, live.

Needs the ``dashboard`` extra (``pip install 'pgflow-python[dashboard]'``). Run it on its own
with ``pgflow dashboard`` or mount the ASGI app in your own::

    from pgflow.dashboard import create_app

    app.mount("/pgflow", create_app(engine, read_only=True))

The app only reads, except for the run actions (POST, CSRF-checked), which ``read_only`` hides
and refuses. Mounted, it trusts the host application's authentication unless ``auth`` is given.
"""

from __future__ import annotations

from sqlalchemy.engine import URL, Engine
from starlette.applications import Starlette

from pgflow import _db
from pgflow.dashboard._app import Dashboard, DashboardSettings, build_app
from pgflow.dashboard._security import (
    PASSWORD_ENV,
    TOKEN_ENV,
    USERNAME_ENV,
    Auth,
    AuthMiddleware,
    BasicAuth,
    RefuseNulMiddleware,
    SecurityHeadersMiddleware,
    TokenAuth,
    auth_from_environment,
    is_loopback,
)

__all__ = [
    "PASSWORD_ENV",
    "TOKEN_ENV",
    "USERNAME_ENV",
    "BasicAuth",
    "DashboardSettings",
    "TokenAuth",
    "auth_from_environment",
    "create_app",
    "is_loopback",
]


def create_app(
    engine: Engine | str | URL,
    *,
    read_only: bool = False,
    auth: Auth | None = None,
    settings: DashboardSettings | None = None,
    read_engine: Engine | str | URL | None = None,
    listen_url: str | URL | None = None,
) -> Starlette:
    """The dashboard as an ASGI application on ``engine`` (a SQLAlchemy engine or a URL).

    ``auth`` (:class:`TokenAuth` or :class:`BasicAuth`) guards every route; ``read_only``
    removes the run actions. ``settings`` tunes page sizes and thresholds.
    ``read_engine`` (e.g. a streaming replica) serves the pages' reads, and the header shows
    its lag; the actions still go to ``engine``. ``listen_url`` is a direct URL for the live
    updates' LISTEN when ``engine`` is behind a transaction pooler (``pool_mode=transaction``).
    """
    bind = _engine(engine)
    chosen = settings or DashboardSettings()
    if read_only and not chosen.read_only:
        chosen = DashboardSettings(**{**chosen.__dict__, "read_only": True})
    reads = None if read_engine is None else _engine(read_engine)
    listen = None if listen_url is None else _db.conninfo(listen_url)
    app = build_app(Dashboard(bind, chosen, reads=reads, listen_url=listen))
    if auth is not None:
        app.add_middleware(AuthMiddleware, auth=auth)
    app.add_middleware(RefuseNulMiddleware)
    app.add_middleware(SecurityHeadersMiddleware)
    return app


def _engine(bind: Engine | str | URL) -> Engine:
    return bind if isinstance(bind, Engine) else _db.create_engine(bind, pool_pre_ping=True)
