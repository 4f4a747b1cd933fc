"""The dashboard's limits page: every concurrency and rate limit with its live use per key value
(in flight or started within the period, out of the limit; tasks waiting on a slot or on the
rate budget), as ``pgflow limits`` shows them (docs/flow-control.md)."""

from __future__ import annotations

from typing import Any, Protocol

from sqlalchemy.engine import Engine
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from pgflow.operations import list_limits


class Host(Protocol):
    """What this page needs of the dashboard (``_app.Dashboard``)."""

    engine: Engine  # reads (a replica, when one is given)

    def render(
        self, request: Request, name: str, status_code: int = 200, **context: Any
    ) -> Response: ...


def limits_page(host: Host, request: Request) -> Response:
    flow_slug = request.query_params.get("flow") or None
    uses = list_limits(host.engine, flow=flow_slug)
    return host.render(
        request,
        "limits.html",
        page="limits",
        uses=uses,
        flow_slug=flow_slug,
        waiting=sum(u.waiting for u in uses),
    )


def routes(host: Host) -> list[Route]:
    def endpoint(request: Request) -> Response:  # a plain function: Starlette threads it
        return limits_page(host, request)

    return [Route("/limits", endpoint, name="limits")]
