"""Pages that change things: a confirmation before each run action, bulk cancel/retry of the runs
a filter matches (with their count first), and the schedules page with its actions.

Every change is a POST from a confirmation page, CSRF-checked, and absent in read-only mode; the
work is done by the public functions of :mod:`pgflow.operations` and :mod:`pgflow.schedules`.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlencode

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from pgflow import schedules
from pgflow.dashboard import _data, _format
from pgflow.dashboard._actions import RunAction, form_fields
from pgflow.dashboard._security import CSRF_FIELD, csrf_ok
from pgflow.errors import PgflowError

# A bulk action works through at most this many runs per confirmation (the page says so).
BULK_LIMIT = 1000
BULK_ACTIONS = ("cancel", "retry")
FILTER_FIELDS = ("flow", "status", "since", "until", "q")


class Host(Protocol):
    """What these pages need of the dashboard (``_app.Dashboard``)."""

    engine: Engine  # where pages read (a replica, when one is given)
    writes: Engine  # the primary: every action goes there
    actions: dict[str, RunAction]

    @property
    def read_only(self) -> bool: ...

    def render(
        self, request: Request, name: str, status_code: int = 200, **context: Any
    ) -> Response: ...


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


def _writable(host: Host) -> None:
    if host.read_only:
        raise HTTPException(403, "the dashboard is read-only")


async def _checked_form(request: Request, host: Host) -> dict[str, str]:
    _writable(host)
    fields = await form_fields(request)
    if not csrf_ok(request.headers, fields.get(CSRF_FIELD)):
        raise HTTPException(403, "the form expired or came from another site: reload the page")
    return fields


# --- one run ------------------------------------------------------------------------------------


def confirm_run_action(host: Host, request: Request) -> Response:
    _writable(host)
    action = host.actions.get(request.path_params["action"])
    if action is None:
        raise HTTPException(404, "no such action")
    try:
        run_id = uuid.UUID(request.path_params["run_id"])
    except ValueError:
        raise HTTPException(404, "no such run") from None
    run = _data.run_summary(host.engine, run_id)
    if run is None:
        raise HTTPException(404, "no such run")
    root = _root(request)
    return host.render(
        request,
        "confirm.html",
        page="runs",
        question=action.question,
        subject=f"run {run_id} of {run['flow_slug']} ({run['status']})",
        applies=action.applies(run),
        verb=action.label,
        action=action.name,
        target=f"{root}/runs/{run_id}/actions/{action.name}",
        fields={},
        back=f"{root}/runs/{run_id}",
    )


# --- bulk ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Bulk:
    action: RunAction
    run_filter: _data.RunFilter
    query: dict[str, str]


def _bulk(host: Host, request: Request, values: QueryParams | dict[str, str]) -> _Bulk:
    _writable(host)
    action = host.actions.get(request.path_params["action"])
    if action is None or action.name not in BULK_ACTIONS:
        raise HTTPException(404, "bulk actions are cancel and retry")
    query = {k: str(values.get(k) or "") for k in FILTER_FIELDS if values.get(k)}
    status = query.get("status")
    if status is not None and status not in _data.RUN_STATUSES:
        raise HTTPException(400, f"status must be one of {', '.join(_data.RUN_STATUSES)}")
    try:
        since = _format.parse_time(query.get("since"))
        until = _format.parse_time(query.get("until"))
    except ValueError:
        raise HTTPException(400, "times look like 2026-01-31T12:00") from None
    prefix = query.get("q", "").strip().lower() or None
    run_filter = _data.RunFilter(query.get("flow"), status, since, until, prefix)
    return _Bulk(action, run_filter, query)


def _targets(host: Host, bulk: _Bulk) -> list[dict[str, Any]]:
    """The runs the filter matches that the action applies to (at most BULK_LIMIT + 1)."""
    rows = _data.runs_for_action(
        host.engine, bulk.run_filter, bulk.action.name, limit=BULK_LIMIT + 1
    )
    return [row for row in rows if bulk.action.applies(row)]


def confirm_bulk(host: Host, request: Request) -> Response:
    bulk = _bulk(host, request, request.query_params)
    targets = _targets(host, bulk)
    root = _root(request)
    described = ", ".join(f"{k}={v}" for k, v in bulk.query.items()) or "all runs"
    count = min(len(targets), BULK_LIMIT)
    more = " (the first of more; repeat for the rest)" if len(targets) > BULK_LIMIT else ""
    return host.render(
        request,
        "confirm.html",
        page="runs",
        question=bulk.action.bulk_question.format(count=count) + more,
        subject=f"runs matching {described}",
        applies=count > 0,
        verb=f"{bulk.action.label} {count} runs",
        action=f"bulk-{bulk.action.name}",
        target=f"{root}/runs/bulk/{bulk.action.name}",
        fields={**bulk.query, "expected": str(count)},
        back=f"{root}/runs?{urlencode(bulk.query)}",
        examples=targets[:10],
        count=count,
    )


async def perform_bulk(host: Host, request: Request) -> Response:
    fields = await _checked_form(request, host)
    bulk = _bulk(host, request, fields)
    targets = (await run_in_threadpool(_targets, host, bulk))[:BULK_LIMIT]

    def act() -> tuple[int, list[str]]:
        done, refused = 0, []
        for row in targets:
            try:
                bulk.action.perform(host.writes, row["run_id"])
                done += 1
            except PgflowError as exc:  # e.g. the run ended meanwhile: say so, go on
                refused.append(f"{row['run_id']}: {exc}")
        return done, refused

    done, refused = await run_in_threadpool(act)
    return host.render(
        request,
        "bulk_done.html",
        page="runs",
        verb=bulk.action.label,
        done=done,
        refused=refused,
        expected=fields.get("expected", ""),
        back=f"{_root(request)}/runs?{urlencode(bulk.query)}",
    )


# --- schedules ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleAction:
    name: str
    label: str
    question: str
    applies: Callable[[schedules.Schedule], bool]
    perform: Callable[[Engine, str], object]


SCHEDULE_ACTIONS = {
    action.name: action
    for action in (
        ScheduleAction(
            "pause",
            "Pause",
            "Pause this schedule? It fires no run until resumed; ticks while paused are not "
            "made up.",
            lambda s: not s.paused,
            schedules.pause_schedule,
        ),
        ScheduleAction(
            "resume",
            "Resume",
            "Resume this schedule? It fires again from its next tick after now.",
            lambda s: s.paused,
            schedules.resume_schedule,
        ),
        ScheduleAction(
            "trigger",
            "Run now",
            "Start a run now, with the schedule's input? Its next tick stays as it is.",
            lambda s: True,
            schedules.trigger_schedule,
        ),
    )
}


def schedules_page(host: Host, request: Request) -> Response:
    return host.render(
        request,
        "schedules.html",
        page="schedules",
        schedules=schedules.list_schedules(host.engine),
        last_runs=_data.schedule_last_runs(host.engine),
        actions=[] if host.read_only else list(SCHEDULE_ACTIONS.values()),
    )


def _schedule_and_action(host: Host, request: Request) -> tuple[schedules.Schedule, ScheduleAction]:
    _writable(host)
    action = SCHEDULE_ACTIONS.get(request.path_params["action"])
    if action is None:
        raise HTTPException(404, "no such action")
    try:
        return schedules.get_schedule(host.engine, request.path_params["name"]), action
    except schedules.ScheduleNotFoundError:
        raise HTTPException(404, "no such schedule") from None


def confirm_schedule_action(host: Host, request: Request) -> Response:
    schedule, action = _schedule_and_action(host, request)
    root = _root(request)
    return host.render(
        request,
        "confirm.html",
        page="schedules",
        question=action.question,
        subject=f"schedule {schedule.name} ({schedule.cron.expression}, flow {schedule.flow_slug})",
        applies=action.applies(schedule),
        verb=action.label,
        action=f"schedule-{action.name}",
        target=f"{root}/schedules/{schedule.name}/actions/{action.name}",
        fields={},
        back=f"{root}/schedules",
    )


async def perform_schedule_action(host: Host, request: Request) -> Response:
    await _checked_form(request, host)
    schedule, action = await run_in_threadpool(_schedule_and_action, host, request)
    try:
        result = await run_in_threadpool(action.perform, host.writes, schedule.name)
    except PgflowError as exc:
        raise HTTPException(409, str(exc)) from None
    root = _root(request)
    if isinstance(result, uuid.UUID):  # a triggered run: show it
        return RedirectResponse(f"{root}/runs/{result}", status_code=303)
    return RedirectResponse(f"{root}/schedules#schedule-{schedule.name}", status_code=303)


def routes(host: Host) -> list[Route]:
    def bound(handler: Callable[[Host, Request], Any]) -> Callable[[Request], Any]:
        # Starlette awaits coroutine functions and runs plain ones in its thread pool (where
        # these may block on the database); the wrapper must keep that distinction.
        if inspect.iscoroutinefunction(handler):

            async def endpoint_async(request: Request) -> Any:
                return await handler(host, request)

            return endpoint_async

        def endpoint(request: Request) -> Any:
            return handler(host, request)

        return endpoint

    return [
        Route("/runs/bulk/{action}", bound(confirm_bulk), methods=["GET"]),
        Route("/runs/bulk/{action}", bound(perform_bulk), methods=["POST"]),
        Route("/runs/{run_id}/actions/{action}", bound(confirm_run_action), methods=["GET"]),
        Route("/schedules", bound(schedules_page)),
        Route(
            "/schedules/{name}/actions/{action}", bound(confirm_schedule_action), methods=["GET"]
        ),
        Route(
            "/schedules/{name}/actions/{action}",
            bound(perform_schedule_action),
            methods=["POST"],
        ),
    ]
