"""Helpers for the dashboard tests: flows, runs driven through upstream's SQL, a live server."""

from __future__ import annotations

import html
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import sqlalchemy as sa
import uvicorn
from sqlalchemy.engine import Engine
from starlette.types import ASGIApp

import sql_only_flow
from pgflow.compiler import compile_flow
from pgflow.context import Context
from pgflow.dsl import Flow, Job, definition_of, map_step, step
from pgflow.worker import Worker, WorkerOptions

XSS = "<script>alert('pwned')</script>"


class Pipeline(Flow, slug="pipeline", max_attempts=1, base_delay=1):
    """fetch -> (left, right) -> join: a diamond, to see a DAG with a fan-out and a fan-in."""

    @step
    def fetch(self, input: Any, ctx: Context) -> Any: ...

    @step(depends_on=[fetch])
    def left(self, deps: Any, ctx: Context) -> Any: ...

    @step(depends_on=[fetch])
    def right(self, deps: Any, ctx: Context) -> Any: ...

    @step(depends_on=[left, right])
    def join(self, deps: Any, ctx: Context) -> Any: ...


class Fanout(Flow, slug="fanout"):
    @map_step
    def square(self, item: int, ctx: Context) -> Any: ...

    @step(depends_on=[square])
    def total(self, deps: Any, ctx: Context) -> Any: ...


# Gates hold a Gated step's handler until the test opens them, so a test can watch each
# transition of a run that a real worker executes.
GATES: dict[str, threading.Event] = {}


def open_gate(step_slug: str) -> None:
    GATES.setdefault(step_slug, threading.Event()).set()


def _wait_at_gate(step_slug: str) -> None:
    if not GATES.setdefault(step_slug, threading.Event()).wait(timeout=60):
        raise TimeoutError(f"the test never opened the gate of {step_slug}")


class Gated(Flow, slug="gated"):
    @step
    def fetch(self, input: Any, ctx: Context) -> Any:
        _wait_at_gate("fetch")
        return input

    @step(depends_on=[fetch])
    def left(self, deps: Any, ctx: Context) -> int:
        _wait_at_gate("left")
        return 1

    @step(depends_on=[fetch])
    def right(self, deps: Any, ctx: Context) -> int:
        _wait_at_gate("right")
        return 2

    @step(depends_on=[left, right])
    def join(self, deps: Any, ctx: Context) -> int:
        _wait_at_gate("join")
        return int(deps["left"]) + int(deps["right"])


@contextmanager
def worker_in_thread(engine: Engine, *flows: type[Flow]) -> Iterator[Worker]:
    """A real worker serving ``flows`` on its own event loop in a thread."""
    GATES.clear()
    worker = Worker(
        list(flows), engine, options=WorkerOptions(poll_interval=0.2, shutdown_timeout=5.0)
    )
    with anyio.from_thread.start_blocking_portal() as portal:
        served = portal.start_task_soon(worker.serve)
        try:
            yield worker
        finally:
            for gate in ("fetch", "left", "right", "join"):
                open_gate(gate)
            portal.call(worker.stop)
            served.result(timeout=30)


def screenshot(page: Any, name: str) -> None:
    """Saved only when PGFLOW_DASHBOARD_SCREENSHOTS names a folder (``make dashboard-screenshots``
    sets it to docs/images), so a normal test run leaves the tree clean."""
    folder = os.environ.get("PGFLOW_DASHBOARD_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(folder) / f"dashboard-{name}.png"), full_page=True)


class Notify(Job, slug="notify"):
    def perform(self, input: Any, ctx: Context) -> Any: ...


NOTIFY_HANDLERS = {"perform": lambda task: {"sent": task["run"]}}


def _echo(task: dict[str, Any]) -> Any:
    return task["run"]


def _fail_on_boom(task: dict[str, Any]) -> Any:
    run = task["run"]
    if isinstance(run, dict) and "boom" in run:
        raise RuntimeError(run["boom"])
    return run


PIPELINE_HANDLERS = {
    "fetch": _fail_on_boom,
    "left": _echo,
    "right": _echo,
    "join": _echo,
}
FANOUT_HANDLERS = {
    "square": lambda task: task * task if isinstance(task, int) else task,
    "total": lambda task: sum(task["square"]),
}


def register(engine: Engine, *flows: type[Flow]) -> None:
    with engine.begin() as connection:
        for flow in flows:
            for statement in compile_flow(definition_of(flow)):
                connection.execute(sa.text(statement))


def start(engine: Engine, flow_slug: str, flow_input: Any) -> uuid.UUID:
    with engine.begin() as connection:
        return sql_only_flow.start_run(connection, flow_slug, flow_input)


def drive(
    engine: Engine, flow_slug: str, handlers: dict[str, Any], run_id: uuid.UUID
) -> dict[str, Any]:
    """Work the queue through upstream's SQL functions until the run ends."""
    worker_id = sql_only_flow.register_worker(engine, flow_slug, "dashboard_tests")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with engine.connect() as connection:
            run = (
                connection.execute(
                    sa.text("SELECT status, output FROM pgflow.runs WHERE run_id = :id"),
                    {"id": run_id},
                )
                .mappings()
                .one()
            )
        if run["status"] != "started":
            return dict(run)
        if not sql_only_flow.work_once(engine, flow_slug, handlers, worker_id):
            time.sleep(0.02)
    raise TimeoutError(f"run {run_id} still started after 60 s")


def fail_with_record(
    engine: Engine,
    flow_slug: str,
    run_id: uuid.UUID,
    *,
    message: str,
    traceback: str,
    error_type: str = "ValueError",
) -> None:
    """Claim the run's first queued task and fail it through pgflow_python.fail_task, which
    keeps a failure record (type, message, traceback) besides upstream's error_message."""
    worker_id = sql_only_flow.register_worker(engine, flow_slug, "dashboard_tests")
    with engine.begin() as connection:
        message_ids = (
            connection.execute(
                sa.text("SELECT msg_id FROM pgmq.read(:queue, 30, 1)"), {"queue": flow_slug}
            )
            .scalars()
            .all()
        )
        task = (
            connection.execute(
                sa.text(
                    "SELECT run_id, step_slug, task_index"
                    " FROM pgflow.start_tasks(:flow, CAST(:ids AS bigint[]), :worker)"
                ),
                {"flow": flow_slug, "ids": list(message_ids), "worker": worker_id},
            )
            .mappings()
            .one()
        )
        assert task["run_id"] == run_id
        connection.execute(
            sa.text(
                "SELECT * FROM pgflow_python.fail_task(:worker, :run, :step, :index,"
                " :message, :error_type, :traceback, true)"
            ),
            {
                "worker": worker_id,
                "run": run_id,
                "step": task["step_slug"],
                "index": task["task_index"],
                "message": message,
                "error_type": error_type,
                "traceback": traceback,
            },
        )


def row_cells(page: str, attribute: str, value: str) -> list[str]:
    """The text of each cell of the table row ``<tr attribute="value">``."""
    match = re.search(
        rf'<tr {re.escape(attribute)}="{re.escape(value)}">(.*?)</tr>', page, re.DOTALL
    )
    if match is None:
        raise AssertionError(f"no row {attribute}={value!r} in the page")
    cells = re.findall(r"<td[^>]*>(.*?)</td>", match.group(1), re.DOTALL)
    return [html.unescape(re.sub(r"<[^>]+>", "", cell)).strip() for cell in cells]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serving(app: ASGIApp) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields the base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, name="dashboard-test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the dashboard test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=60)


@contextmanager
def http_client(app: ASGIApp) -> Iterator[httpx.Client]:
    """An HTTP client on ``app`` served by uvicorn (the real server, streaming included)."""
    with serving(app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        yield client


class FanoutOnce(Flow, slug="fanout_once", max_attempts=1):
    """A map whose element 17 fails its only attempt: the run fails, the rest are cancelled."""

    @map_step
    def square(self, item: int, ctx: Context) -> Any: ...


def _square_unless_17(task: Any) -> Any:
    if task == 17:
        raise ValueError("17 is not allowed")
    return task * task


FANOUT_ONCE_HANDLERS = {"square": _square_unless_17}
