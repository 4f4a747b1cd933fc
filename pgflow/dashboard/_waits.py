"""Waiting steps in the dashboard: the list of every open wait, a run's waits, and the form that
sends a signal (docs/waiting.md). A subflow step waiting for its child runs is listed too, with
links to its children and no form: its children complete it.

The form is a POST, CSRF-checked, absent and refused in read-only mode like the run actions; it
calls the public :func:`pgflow.client.signal` on the primary. Output that is not JSON and a
signal the database refuses (the step no longer waits, the run ended) re-show the form with the
text as typed and a message saying why; nothing changes.
"""

from __future__ import annotations

import inspect
import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import parse_qs, urlencode

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from pgflow.client import signal
from pgflow.dashboard import _data
from pgflow.dashboard._security import CSRF_FIELD, csrf_ok
from pgflow.errors import PgflowError
from pgflow.results import SignalOutcome

# A signal's output is typed into a form: larger than a run action's form, still bounded.
MAX_SIGNAL_FORM_BYTES = 256 * 1024
SIGNALLABLE = ("signal",)  # what a wait waits for that this form can end (not "subflow")


class Host(Protocol):
    """What these pages need of the dashboard (``_app.Dashboard``)."""

    engine: Engine  # reads (a replica, when one is given)
    writes: Engine  # the primary

    @property
    def read_only(self) -> bool: ...

    def render(
        self, request: Request, name: str, status_code: int = 200, **context: Any
    ) -> Response: ...


# --- reads ------------------------------------------------------------------------------------


def _waits(
    engine: Engine,
    *,
    run_id: uuid.UUID | None = None,
    flow_slug: str | None = None,
    after: tuple[datetime, uuid.UUID, str] | None = None,
    limit: int | None = None,
) -> list[_data.Row]:
    return _data.rows(
        engine,
        "dashboard_waits",
        run_id=run_id,
        flow_slug=flow_slug,
        after_since=after[0] if after else None,
        after_run_id=after[1] if after else None,
        after_step=after[2] if after else None,
        limit=limit,
    )


def run_waits(engine: Engine, run_id: uuid.UUID) -> list[_data.Row]:
    """The run's steps that wait now: waits_for (``signal``, or ``subflow`` with children,
    children_done, children_unstarted, child_run_ids), waiting_since, waiting_until,
    on_timeout."""
    return _waits(engine, run_id=run_id)


def _run_id(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params["run_id"])
    except ValueError:
        raise HTTPException(404, "no such run") from None


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def _after(raw: str | None) -> tuple[datetime, uuid.UUID, str] | None:
    if not raw:
        return None
    since, _, rest = raw.partition("|")
    run_id, _, step_slug = rest.partition("|")
    try:
        return datetime.fromisoformat(since), uuid.UUID(run_id), step_slug
    except ValueError:
        raise HTTPException(400, "malformed page cursor") from None


def waits_page(host: Host, request: Request, page_size: int) -> Response:
    """Every step waiting now (for a signal, or a subflow step for its child runs), longest
    waiting first, a page at a time."""
    flow_slug = request.query_params.get("flow") or None
    after = _after(request.query_params.get("after"))
    rows = _waits(host.engine, flow_slug=flow_slug, after=after, limit=page_size + 1)
    next_query = None
    if len(rows) > page_size:
        rows = rows[:page_size]
        last = rows[-1]
        cursor = f"{last['waiting_since'].isoformat()}|{last['run_id']}|{last['step_slug']}"
        next_query = urlencode({**({"flow": flow_slug} if flow_slug else {}), "after": cursor})
    total = _data.rows(host.engine, "dashboard_waits_count", flow_slug=flow_slug)[0]["waiting"]
    return host.render(
        request,
        "waits.html",
        page="waits",
        waits=rows,
        total=total,
        flow_slug=flow_slug,
        next_query=next_query,
        db_now=_data.database_now(host.engine),
        signallable=SIGNALLABLE,
    )


# --- the signal form --------------------------------------------------------------------------


def _form(
    host: Host,
    request: Request,
    *,
    output_text: str = "{}",
    error: str | None = None,
    notice: str | None = None,
    status_code: int = 200,
) -> Response:
    run_id = _run_id(request)
    step_slug = request.path_params["step_slug"]
    run = _data.run_summary(host.engine, run_id)
    if run is None:
        raise HTTPException(404, "no such run")
    wait = next((w for w in run_waits(host.engine, run_id) if w["step_slug"] == step_slug), None)
    return host.render(
        request,
        "signal.html",
        status_code=status_code,
        page="runs",
        run=run,
        step_slug=step_slug,
        wait=wait,
        can_signal=wait is not None and wait["waits_for"] in SIGNALLABLE,
        output_text=output_text,
        error=error,
        notice=notice,
        db_now=_data.database_now(host.engine),
        target=f"{_root(request)}/runs/{run_id}/steps/{step_slug}/signal",
    )


def signal_form(host: Host, request: Request) -> Response:
    if host.read_only:
        raise HTTPException(403, "the dashboard is read-only")
    return _form(host, request)


def parse_output(text: str) -> Any:
    """The JSON value typed into the form; ValueError saying where it is not JSON."""
    if not text.strip():
        raise ValueError('the output is empty: type a JSON value (null, {}, [], "text", 1, …)')

    def refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    try:
        return json.loads(text, parse_constant=refuse_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None


async def _signal_fields(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > MAX_SIGNAL_FORM_BYTES:
        raise HTTPException(
            413,
            f"the output is larger than {MAX_SIGNAL_FORM_BYTES // 1024} KiB: signal it with "
            "pgflow.signal or `pgflow runs signal` instead",
        )
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {key: values[0] for key, values in fields.items()}


async def _reshow(
    host: Host,
    request: Request,
    text: str,
    *,
    error: str | None = None,
    notice: str | None = None,
    status_code: int = 200,
) -> Response:
    def render() -> Response:
        return _form(
            host, request, output_text=text, error=error, notice=notice, status_code=status_code
        )

    return await run_in_threadpool(render)


async def send_signal(host: Host, request: Request) -> Response:
    if host.read_only:
        raise HTTPException(403, "the dashboard is read-only")
    fields = await _signal_fields(request)
    if not csrf_ok(request.headers, fields.get(CSRF_FIELD)):
        raise HTTPException(403, "the form expired or came from another site: reload the page")
    run_id = _run_id(request)
    step_slug = request.path_params["step_slug"]
    text = fields.get("output", "")
    try:
        output = parse_output(text)
    except ValueError as exc:
        return await _reshow(host, request, text, error=str(exc), status_code=400)
    try:
        result = await run_in_threadpool(signal, host.writes, run_id, step_slug, output)
    except PgflowError as exc:
        return await _reshow(host, request, text, error=str(exc), status_code=409)
    if result.outcome is SignalOutcome.COMPLETED:
        return RedirectResponse(f"{_root(request)}/runs/{run_id}#step-{step_slug}", 303)
    notice = (
        f"the step was already signalled at {result.signalled_at:%Y-%m-%d %H:%M:%S} UTC: the "
        "first signal counts, this one changed nothing"
        if result.outcome is SignalOutcome.ALREADY_SIGNALLED
        else "the step does not wait yet: the output is kept and completes it when it waits"
    )
    return await _reshow(host, request, text, notice=notice)


def routes(host: Host, page_size: int) -> list[Route]:
    def bound(handler: Callable[..., Any], *extra: Any) -> Callable[[Request], Any]:
        # Starlette awaits coroutine functions and runs plain ones in its thread pool (where
        # these block on the database); the wrapper keeps that distinction.
        if inspect.iscoroutinefunction(handler):

            async def endpoint_async(request: Request) -> Any:
                return await handler(host, request, *extra)

            return endpoint_async

        def endpoint(request: Request) -> Any:
            return handler(host, request, *extra)

        return endpoint

    return [
        Route("/waits", bound(waits_page, page_size), name="waits"),
        Route("/runs/{run_id}/steps/{step_slug}/signal", bound(signal_form), methods=["GET"]),
        Route("/runs/{run_id}/steps/{step_slug}/signal", bound(send_signal), methods=["POST"]),
    ]
