"""Actions on a run (cancel, retry, resume): POST forms, CSRF-checked, absent in read-only mode.

They call the public run-control functions of :mod:`pgflow.operations`; the dashboard adds no
SQL of its own for them.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from sqlalchemy.engine import Engine
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from pgflow import operations
from pgflow.dashboard._security import CSRF_FIELD, csrf_ok
from pgflow.errors import PgflowError

MAX_FORM_BYTES = 4096


@dataclass(frozen=True)
class RunAction:
    """``perform`` returns the run to show afterwards (a retry's new run), or None for this one."""

    name: str
    label: str
    applies: Callable[[Mapping[str, Any]], bool]  # given the dashboard_run row
    perform: Callable[[Engine, uuid.UUID], uuid.UUID | None]
    question: str = "Are you sure?"  # the confirmation page's question
    bulk_question: str = "{count} runs?"


def _cancel(engine: Engine, run_id: uuid.UUID) -> uuid.UUID | None:
    operations.cancel_run(engine, run_id, reason="cancelled from the dashboard")
    return None


def _retry(engine: Engine, run_id: uuid.UUID) -> uuid.UUID | None:
    return operations.retry_run(engine, run_id).new_run_id


def _resume(engine: Engine, run_id: uuid.UUID) -> uuid.UUID | None:
    operations.resume_run(engine, run_id)
    return None


def run_control_actions() -> dict[str, RunAction]:
    """Cancel a started run; retry (once: a new run) or resume (in place) a failed one."""
    return {
        "cancel": RunAction(
            "cancel",
            "Cancel",
            lambda run: run["status"] == "started",
            _cancel,
            "Cancel this run? It fails as cancelled: its queued tasks are cancelled and running "
            "handlers are told to stop. Retry or resume can start it again.",
            "Cancel {count} started runs? Each fails as cancelled; retry or resume can start "
            "them again.",
        ),
        "retry": RunAction(
            "retry",
            "Retry as a new run",
            lambda run: run["status"] == "failed" and run.get("retried_as_run_id") is None,
            _retry,
            "Retry this run? A new run of the same flow starts with the same input; this one "
            "stays failed and links to it.",
            "Retry {count} failed runs? Each gets a new run with the same input.",
        ),
        "resume": RunAction(
            "resume",
            "Resume",
            lambda run: run["status"] == "failed",
            _resume,
            "Resume this run in place? Its failed and cancelled steps run again; completed "
            "steps keep their outputs.",
        ),
    }


async def form_fields(request: Request) -> dict[str, str]:
    """A small urlencoded form's fields (the first value of each)."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise HTTPException(413, "form too large")
    return {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}


async def perform(
    request: Request,
    engine: Engine,
    actions: dict[str, RunAction],
    run_id: uuid.UUID,
    *,
    read_only: bool,
) -> Response:
    if read_only:
        raise HTTPException(403, "the dashboard is read-only")
    action = actions.get(request.path_params["action"])
    if action is None:
        raise HTTPException(404, "no such action")
    if not csrf_ok(request.headers, (await form_fields(request)).get(CSRF_FIELD)):
        raise HTTPException(403, "the form expired or came from another site: reload the page")
    try:
        shown = await run_in_threadpool(action.perform, engine, run_id)
    except PgflowError as exc:
        raise HTTPException(409, str(exc)) from None
    root = request.scope.get("root_path", "")
    return RedirectResponse(f"{root}/runs/{shown or run_id}", status_code=303)
