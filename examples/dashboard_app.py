"""The pgflow dashboard mounted inside an application of your own (Starlette here; FastAPI and
Litestar mount ASGI apps the same way). docs/dashboard.md shows this file.

    DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/app uvicorn dashboard_app:app
"""

from __future__ import annotations

import os

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from pgflow.dashboard import create_app


def homepage(request: Request) -> PlainTextResponse:
    return PlainTextResponse("my application")


def build(engine: sa.Engine) -> Starlette:
    return Starlette(
        routes=[
            Route("/", homepage),
            # Your application's authentication guards this path; read_only hides the actions.
            Mount("/pgflow", app=create_app(engine, read_only=True)),
        ]
    )


# The engine your application already has (the psycopg 3 driver: postgresql+psycopg://).
engine = sa.create_engine(os.environ.get("DATABASE_URL", "postgresql+psycopg:///postgres"))
app = build(engine)
