"""`make demo`: the whole loop in one process.

Installs the schema into a throwaway database, registers the example flows (the SQL a migration
would apply), runs a worker, starts runs from "the app" and waits for their results, while the
worker's structlog events print as they happen.

    python examples/demo.py    # DATABASE_URL, else a local or embedded PostgreSQL
    python examples/demo.py --dashboard    # then keep the worker and serve the web dashboard
"""

from __future__ import annotations

import contextlib
import sys
import time

import anyio
import anyio.to_thread
import sqlalchemy as sa

from myapp.flows import AnalyzeWebsite, SendEmail, Thumbnails
from pgflow.client import enqueue, start_flow_and_wait, wait_for_run
from pgflow.compiler import compile_flow
from pgflow.dsl import definition_of
from pgflow.errors import PgflowError
from pgflow.schedules import Cron, create_schedule, get_schedule
from pgflow.schema import install
from pgflow.telemetry import configure_logging
from pgflow.testing import temporary_database
from pgflow.worker import Worker, WorkerOptions

FLOWS = [AnalyzeWebsite, Thumbnails, SendEmail]


def app(engine: sa.Engine) -> None:
    """What application code does: start runs, wait for them, read the outputs."""
    run = start_flow_and_wait(engine, AnalyzeWebsite, {"url": "good.example"}, timeout=30)
    print(f"\n>>> analyze_website {run.status}: {run.output}\n")
    run = start_flow_and_wait(engine, Thumbnails, ["cat.png", "dog.png", "owl.png"], timeout=30)
    print(f"\n>>> thumbnails {run.status}: {run.output}\n")
    with engine.begin() as connection:  # a job, enqueued inside the app's own transaction
        job_run = enqueue(connection, SendEmail, {"to": "ada@example.org"})
    print(f"\n>>> send_email {wait_for_run(engine, job_run, timeout=30).output}\n")
    try:
        start_flow_and_wait(engine, Thumbnails, {"not": "a list"}, timeout=30)
    except PgflowError as exc:
        print(f"\n>>> a bad input is refused before it reaches the database:\n    {exc}\n")
    # A schedule: the worker's scheduler starts a run on every tick (here every 2 seconds).
    create_schedule(engine, SendEmail, Cron("*/2 * * * * *", name="reminders", input={"to": "ops"}))
    deadline = time.monotonic() + 30
    while (fired := get_schedule(engine, "reminders").last_run_id) is None:
        assert time.monotonic() < deadline, "the schedule did not fire within 30 s"
        time.sleep(0.1)
    print(f"\n>>> schedule reminders fired: {wait_for_run(engine, fired, timeout=30).input}\n")


async def serve_dashboard(engine: sa.Engine, port: int = 8080) -> None:
    """The web dashboard on the demo's database until Ctrl-C (needs the dashboard extra)."""
    import uvicorn  # noqa: PLC0415 - only with --dashboard

    from pgflow.dashboard import create_app  # noqa: PLC0415

    print(f"\n>>> the web dashboard: http://127.0.0.1:{port}/  (Ctrl-C stops the demo)\n")
    config = uvicorn.Config(create_app(engine), host="127.0.0.1", port=port, log_level="warning")
    await uvicorn.Server(config).serve()


async def main(dashboard: bool) -> None:
    configure_logging("console", "info")
    with temporary_database() as url:
        report = install(url)
        print(f"installed the pgflow schema ({len(report.applied)} items, pgmq {report.pgmq_mode})")
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            for flow in FLOWS:
                for statement in compile_flow(definition_of(flow)):
                    connection.execute(sa.text(statement))
        worker = Worker(FLOWS, engine, options=WorkerOptions(poll_interval=0.5))
        async with anyio.create_task_group() as group:
            group.start_soon(worker.serve)
            try:
                await anyio.to_thread.run_sync(app, engine)
                if dashboard:
                    await serve_dashboard(engine)
                else:
                    print(
                        ">>> see these runs in the web dashboard: make demo DEMO_ARGS=--dashboard"
                    )
            finally:
                worker.stop()
        engine.dispose()


if __name__ == "__main__":
    # Ctrl-C ends the dashboard demo; by then the throwaway database is already dropped.
    with contextlib.suppress(KeyboardInterrupt):
        anyio.run(main, "--dashboard" in sys.argv[1:])
