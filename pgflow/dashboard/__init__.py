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
) -> Starlette:
    """The dashboard as an ASGI application on ``engine`` (a SQLAlchemy engine or a URL).

    ``auth`` (:class:`TokenAuth` or :class:`BasicAuth`) guards every route; ``read_only``
    removes the run actions. ``settings`` tunes page sizes and thresholds.
    """
    bind = engine if isinstance(engine, Engine) else _db.create_engine(engine, pool_pre_ping=True)
    chosen = settings or DashboardSettings()
    if read_only and not chosen.read_only:
        chosen = DashboardSettings(**{**chosen.__dict__, "read_only": True})
    app = build_app(Dashboard(bind, chosen))
    if auth is not None:
        app.add_middleware(AuthMiddleware, auth=auth)
    app.add_middleware(SecurityHeadersMiddleware)
    return app
