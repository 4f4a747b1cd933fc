"""The dashboard's ASGI application: pages, fragments for live updates, server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import jinja2
import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from pgflow import _db
from pgflow.dashboard import _charts, _control, _dag, _data, _format, _limits, _waits
from pgflow.dashboard._actions import RunAction, perform, run_control_actions
from pgflow.dashboard._live import Broadcaster
from pgflow.dashboard._run_view import run_view, task_view
from pgflow.dashboard._security import csrf_token, set_csrf_cookie

_log = logging.getLogger("pgflow.dashboard")
_HEX_PREFIX = re.compile(r"^[0-9a-f-]{1,36}$")
SSE_HEARTBEAT_SECONDS = 15.0


@dataclass(frozen=True)
class DashboardSettings:
    read_only: bool = False
    stale_after_seconds: int = 30  # a worker silent this long is "stale"
    page_size: int = 50
    preview_chars: int = 2000  # values longer than this are cut, with a link to all of them
    tasks_per_step: int = 20  # map steps show this many tasks, then a link to the rest
    title: str = "pgflow"


def _templates() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("pgflow.dashboard", "templates"),
        autoescape=True,  # every value is escaped, in every template, always
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["duration"] = _format.duration
    environment.filters["timestamp"] = _format.timestamp
    environment.filters["percent"] = _format.percent
    environment.globals["between"] = _format.between
    environment.globals["took"] = _format.took
    environment.globals["failed_spans"] = _format.failed_spans
    environment.globals["ago"] = _format.ago
    return environment


class Dashboard:
    """Holds what every request needs; its methods are the routes.

    ``engine`` is where the pages read (a streaming replica, when one is given); ``writes`` is
    the primary, where the actions go and whose notifications (``listen_url``, else the primary
    itself unless it is behind a transaction pooler) drive the live updates.
    """

    def __init__(
        self,
        engine: Engine,
        settings: DashboardSettings,
        actions: dict[str, RunAction] | None = None,
        *,
        reads: Engine | None = None,
        listen_url: str | None = None,
    ) -> None:
        self.engine = reads or engine
        self.writes = engine
        self.settings = settings
        chosen = run_control_actions() if actions is None else actions
        self.actions = {} if settings.read_only else dict(chosen)
        self.templates = _templates()
        self.broadcaster = Broadcaster(engine, listen_url)

    @property
    def read_only(self) -> bool:
        return self.settings.read_only

    # --- helpers ------------------------------------------------------------------------------

    def render(
        self, request: Request, name: str, status_code: int = 200, **context: Any
    ) -> Response:
        token, is_new = csrf_token(request.headers)
        root = request.scope.get("root_path", "")
        html = self.templates.get_template(name).render(
            root=root,
            replica_lag=self._replica_lag(),
            title=self.settings.title,
            read_only=self.settings.read_only,
            csrf_token=token,
            now=datetime.now(UTC),
            request_path=request.url.path,
            **context,
        )
        response = HTMLResponse(html, status_code=status_code)
        response.headers["cache-control"] = "no-store"
        if is_new:
            set_csrf_cookie(response, token, root)
        return response

    def _replica_lag(self) -> _data.ReplicaLag | None:
        """How far behind the primary the pages are, when they read from a replica."""
        return None if self.engine is self.writes else _data.replica_lag(self.engine)

    def _run_id(self, request: Request) -> uuid.UUID:
        try:
            return uuid.UUID(request.path_params["run_id"])
        except ValueError:
            raise HTTPException(404, "no such run") from None

    # --- pages --------------------------------------------------------------------------------

    def overview(self, request: Request) -> Response:
        now = _data.database_now(self.engine)
        data = _data.overview(self.engine, now=now, stale_seconds=self.settings.stale_after_seconds)
        chart = _charts.throughput(
            data.throughput, since=data.since, buckets=24, bucket=timedelta(hours=1)
        )
        return self.render(
            request,
            "overview.html",
            page="overview",
            overview=data,
            flow_rows=[f for f in data.flows if f.flow_type != "job"],
            job_rows=[f for f in data.flows if f.flow_type == "job"],
            chart=chart,
        )

    def flows(self, request: Request) -> Response:
        return self.render(request, "flows.html", page="flows", flows=_data.flows(self.engine))

    def flow(self, request: Request) -> Response:
        slug = request.path_params["flow_slug"]
        flow = _data.flow(self.engine, slug)
        if flow is None:
            raise HTTPException(404, "no such flow")
        steps = _data.flow_steps(self.engine, slug)
        run_filter = _data.RunFilter(flow_slug=slug)
        runs, next_query = self._runs_and_next(request, run_filter)
        return self.render(
            request,
            "flow.html",
            page="flows",
            flow=flow,
            steps=steps,
            dag=_dag.layout(_dag.shapes_from_rows(steps)),
            runs=runs,
            next_query=next_query,
        )

    def runs(self, request: Request) -> Response:
        params = request.query_params
        search = (params.get("q") or "").strip().lower()
        if search:
            with contextlib.suppress(ValueError):
                whole = uuid.UUID(search)
                if _data.run_value(self.engine, whole, "input") is not _data.MISSING:
                    return Response(
                        status_code=303,
                        headers={"location": f"{request.scope.get('root_path', '')}/runs/{whole}"},
                    )
        error = None
        if search and not _HEX_PREFIX.match(search):
            error = "a run id is made of hexadecimal digits and dashes"
            search = ""
        status = params.get("status") or None
        if status is not None and status not in _data.RUN_STATUSES:
            raise HTTPException(400, f"status must be one of {', '.join(_data.RUN_STATUSES)}")
        try:
            since = _format.parse_time(params.get("since"))
            until = _format.parse_time(params.get("until"))
        except ValueError:
            raise HTTPException(400, "times look like 2026-01-31T12:00") from None
        run_filter = _data.RunFilter(
            flow_slug=params.get("flow") or None,
            status=status,
            since=since,
            until=until,
            run_id_prefix=search or None,
        )
        runs, next_query = self._runs_and_next(request, run_filter)
        return self.render(
            request,
            "runs.html",
            page="runs",
            runs=runs,
            next_query=next_query,
            run_filter=run_filter,
            search=search,
            error=error,
            statuses=_data.RUN_STATUSES,
            flow_slugs=[f["flow_slug"] for f in _data.flows(self.engine)],
            since_value=params.get("since", ""),
            until_value=params.get("until", ""),
            filter_query=urlencode({k: params[k] for k in _control.FILTER_FIELDS if params.get(k)}),
        )

    def _runs_and_next(
        self, request: Request, run_filter: _data.RunFilter
    ) -> tuple[list[dict[str, Any]], str | None]:
        after = _cursor(request.query_params.get("after"))
        limit = self.settings.page_size
        rows = _data.runs_page(self.engine, run_filter, after=after, limit=limit + 1)
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        last = rows[-1]
        query = {k: v for k, v in request.query_params.items() if k != "after"}
        query["after"] = f"{last['started_at'].isoformat()}|{last['run_id']}"
        return rows, urlencode(query)

    def run(self, request: Request) -> Response:
        run_id = self._run_id(request)
        context = self._run_context(run_id)
        return self.render(request, "run.html", page="runs", **context)

    def run_live(self, request: Request) -> Response:
        """The parts of the run page that change while it runs, for the page's script."""
        run_id = self._run_id(request)
        context = self._run_context(run_id)
        return self.render(request, "_run_live.html", **context)

    def _run_context(self, run_id: uuid.UUID) -> dict[str, Any]:
        detail = _data.run_detail(
            self.engine,
            run_id,
            preview_chars=self.settings.preview_chars,
            tasks_per_step=self.settings.tasks_per_step,
        )
        if detail is None:
            raise HTTPException(404, "no such run")
        return {
            **run_view(detail, now=_data.database_now(self.engine)),
            "tasks_per_step": self.settings.tasks_per_step,
            "run_actions": [a for a in self.actions.values() if a.applies(detail.run)],
            "waits": _waits.run_waits(self.engine, run_id),
            "signallable": _waits.SIGNALLABLE,
        }

    def step_tasks(self, request: Request) -> Response:
        run_id = self._run_id(request)
        step_slug = request.path_params["step_slug"]
        params = request.query_params
        try:
            # "from" jumps to a task index; "after" is the keyset of the next page.
            if params.get("from"):
                after_index = int(params["from"]) - 1
            else:
                after_index = int(params.get("after", "-1"))
        except ValueError:
            raise HTTPException(400, "a task index is a whole number") from None
        status = params.get("status") or None
        if status is not None and status not in _data.TASK_STATUSES:
            raise HTTPException(400, f"status must be one of {', '.join(_data.TASK_STATUSES)}")
        limit = self.settings.page_size
        rows = _data.step_tasks_page(
            self.engine,
            run_id,
            step_slug,
            after_index=max(after_index, -1),
            limit=limit + 1,
            preview_chars=self.settings.preview_chars,
            status=status,
        )
        tasks = [task_view(task) for task in rows[:limit]]
        next_query = None
        if len(rows) > limit:
            next_query = urlencode(
                {"after": tasks[-1]["task_index"], **({"status": status} if status else {})}
            )
        return self.render(
            request,
            "step_tasks.html",
            page="runs",
            run_id=run_id,
            step_slug=step_slug,
            tasks=tasks,
            next_query=next_query,
            status=status,
            jumped_to=params.get("from"),
        )

    def workers(self, request: Request) -> Response:
        now = _data.database_now(self.engine)
        after = None
        raw = request.query_params.get("after")
        if raw:
            cursor = _cursor(raw)
            after = (cursor.started_at, cursor.run_id) if cursor else None
        limit = self.settings.page_size
        rows = _data.workers_page(
            self.engine,
            now=now,
            stale_seconds=self.settings.stale_after_seconds,
            after=after,
            limit=limit + 1,
        )
        next_query = None
        if len(rows) > limit:
            rows = rows[:limit]
            last = rows[-1]
            next_query = urlencode(
                {"after": f"{last['last_heartbeat_at'].isoformat()}|{last['worker_id']}"}
            )
        return self.render(
            request,
            "workers.html",
            page="workers",
            workers=rows,
            db_now=now,
            next_query=next_query,
            stale_after=self.settings.stale_after_seconds,
        )

    async def act(self, request: Request) -> Response:
        return await perform(
            request,
            self.writes,
            self.actions,
            self._run_id(request),
            read_only=self.settings.read_only,
        )

    # --- whole values -------------------------------------------------------------------------

    def run_value(self, request: Request) -> Response:
        which = request.path_params["which"]
        if which not in ("input", "output"):
            raise HTTPException(404, "a run has an input and an output")
        value = _data.run_value(self.engine, self._run_id(request), which)
        if value is _data.MISSING:
            raise HTTPException(404, "no such run")
        return _json_document(value)

    def task_value(self, request: Request) -> Response:
        try:
            task_index = int(request.path_params["task_index"])
        except ValueError:
            raise HTTPException(404, "no such task") from None
        row = _data.task_value(
            self.engine, self._run_id(request), request.path_params["step_slug"], task_index
        )
        if row is None:
            raise HTTPException(404, "no such task")
        which = request.path_params["which"]
        if which not in ("output", "error"):
            raise HTTPException(404, "a task has an output and an error")
        if which == "error":
            return PlainTextResponse(row["error_message"] or "")
        return _json_document(row["output"])

    def step_error(self, request: Request) -> Response:
        row = _data.step_error(self.engine, self._run_id(request), request.path_params["step_slug"])
        if row is None:
            raise HTTPException(404, "no such step state")
        return PlainTextResponse(row["error_message"] or "")

    # --- live ---------------------------------------------------------------------------------

    async def all_events(self, request: Request) -> Response:
        """Every run and step event, for the list pages."""
        return StreamingResponse(
            self._event_stream(None),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def events(self, request: Request) -> Response:
        run_id = str(self._run_id(request))
        return StreamingResponse(
            self._event_stream(run_id),
            media_type="text/event-stream",
            headers={"cache-control": "no-store", "x-accel-buffering": "no"},
        )

    async def _event_stream(self, run_id: str | None) -> AsyncIterator[str]:
        async with self.broadcaster.subscribe(run_id) as subscription:
            # Sent once subscribed: the page refreshes then, so nothing that happened between
            # rendering it and subscribing is missed.
            yield "event: ready\ndata: {}\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(
                        subscription.queue.get(), timeout=SSE_HEARTBEAT_SECONDS
                    )
                except TimeoutError:
                    yield ": heartbeat\n\n"
                    continue
                yield f"event: change\ndata: {json.dumps(event)}\n\n"


def _favicon(request: Request) -> Response:
    # Browsers and tools ask for /favicon.ico whatever the page links: answer, never a 404.
    return RedirectResponse(f"{request.scope.get('root_path', '')}/static/favicon.svg", 301)


def _json_document(value: object) -> Response:
    # Served as JSON with nosniff: a browser shows it as data and never renders it as a page.
    return JSONResponse(value, headers={"content-disposition": "inline"})


def _cursor(raw: str | None) -> _data.Cursor | None:
    if not raw:
        return None
    moment, _, identifier = raw.partition("|")
    try:
        return _data.Cursor(datetime.fromisoformat(moment), uuid.UUID(identifier))
    except ValueError:
        raise HTTPException(400, "malformed page cursor") from None


def _http_error(request: Request, exc: Exception) -> Awaitable[Response] | Response:
    if not isinstance(exc, HTTPException):
        raise exc
    return PlainTextResponse(exc.detail, status_code=exc.status_code, headers=exc.headers)


def _database_unavailable(dashboard: Dashboard) -> Any:
    """A clear 503 page, and one log line, when the database goes away under a running
    dashboard (start-up already refused an unreachable one)."""

    def handle(request: Request, exc: Exception) -> Response:
        if not isinstance(exc, sa.exc.OperationalError | psycopg.OperationalError):
            raise exc
        message = str(_db.unavailable(dashboard.engine.url, exc))
        _log.warning("%s %s: %s", request.method, request.url.path, message)
        return dashboard.render(
            request, "unavailable.html", status_code=503, page="", message=message
        )

    return handle


def build_app(dashboard: Dashboard) -> Starlette:
    d = dashboard
    routes = [
        Route("/", d.overview, name="overview"),
        Route("/flows", d.flows, name="flows"),
        Route("/flows/{flow_slug}", d.flow, name="flow"),
        Route("/runs", d.runs, name="runs"),
        Route("/runs/{run_id}", d.run, name="run"),
        Route("/runs/{run_id}/live", d.run_live, name="run_live"),
        Route("/runs/{run_id}/actions/{action}", d.act, methods=["POST"], name="run_action"),
        Route("/runs/{run_id}/events", d.events, name="run_events"),
        Route("/runs/{run_id}/value/{which:str}", d.run_value, name="run_value"),
        Route("/runs/{run_id}/steps/{step_slug}/tasks", d.step_tasks, name="step_tasks"),
        Route("/runs/{run_id}/steps/{step_slug}/error", d.step_error, name="step_error"),
        Route(
            "/runs/{run_id}/tasks/{step_slug}/{task_index}/{which}",
            d.task_value,
            name="task_value",
        ),
        Route("/workers", d.workers, name="workers"),
        Route("/events", d.all_events, name="events"),
        *_control.routes(d),
        *_waits.routes(d, d.settings.page_size),
        *_limits.routes(d),
        Route("/favicon.ico", _favicon),
        Mount("/static", StaticFiles(packages=[("pgflow.dashboard", "static")]), name="static"),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Served on its own, shutdown closes the LISTEN connection even if a browser still
        # watches; mounted, the host's lifespan does not reach here and the last browser to
        # leave closes it.
        yield
        await d.broadcaster.close()

    unavailable = _database_unavailable(dashboard)
    app = Starlette(
        routes=routes,
        exception_handlers={
            HTTPException: _http_error,
            sa.exc.OperationalError: unavailable,
            psycopg.OperationalError: unavailable,
        },
        lifespan=lifespan,
    )
    app.state.dashboard = dashboard
    return app
