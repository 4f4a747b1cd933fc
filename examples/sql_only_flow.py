"""A flow defined and driven with nothing but pgflow's SQL functions (no DSL, no worker).

It shows the protocol every worker speaks: read messages from the flow's pgmq queue, claim
them with ``pgflow.start_tasks``, run the step, report ``complete_task`` or ``fail_task``.

    python examples/sql_only_flow.py    # uses DATABASE_URL, else a local or embedded server
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

Handler = Callable[[dict[str, Any]], Any]

# step slug -> (dependencies, handler). Upstream 0.8.1 gives each task {"run": flow_input,
# <dep>: <dep output>, ...}.
GREETING_FLOW: dict[str, tuple[list[str], Handler]] = {
    "name": ([], lambda task: task["run"]["name"].strip().title()),
    "greeting": (["name"], lambda task: f"Hello, {task['name']}!"),
    "card": (
        ["name", "greeting"],  # fan-in: waits for both
        lambda task: {"to": task["name"], "text": task["greeting"], "chars": len(task["greeting"])},
    ),
}


def define_flow(
    connection: Connection,
    flow_slug: str,
    steps: dict[str, tuple[list[str], Handler]],
    *,
    max_attempts: int = 3,
    base_delay: int = 1,
) -> None:
    connection.execute(
        sa.text("SELECT pgflow.create_flow(:slug, :max_attempts, :base_delay)"),
        {"slug": flow_slug, "max_attempts": max_attempts, "base_delay": base_delay},
    )
    for step_slug, (deps, _handler) in steps.items():
        connection.execute(
            sa.text("SELECT pgflow.add_step(:flow, :step, CAST(:deps AS text[]))"),
            {"flow": flow_slug, "step": step_slug, "deps": deps},
        )


def start_run(connection: Connection, flow_slug: str, flow_input: Any) -> uuid.UUID:
    run_id: uuid.UUID = connection.execute(
        sa.text("SELECT run_id FROM pgflow.start_flow(:flow, CAST(:input AS jsonb))"),
        {"flow": flow_slug, "input": json.dumps(flow_input)},
    ).scalar_one()
    return run_id


def register_worker(engine: Engine, flow_slug: str, name: str = "sql_only_flow") -> uuid.UUID:
    """start_tasks needs a pgflow.workers row for the claiming worker."""
    worker_id = uuid.uuid4()
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO pgflow.workers (worker_id, queue_name, function_name)"
                " VALUES (:id, :queue, :name)"
            ),
            {"id": worker_id, "queue": flow_slug, "name": name},
        )
    return worker_id


def work_once(
    engine: Engine,
    flow_slug: str,
    handlers: Mapping[str, Handler],
    worker_id: uuid.UUID,
    *,
    visibility: int = 5,
) -> int:
    """Read, claim and run one batch of the flow's tasks; returns how many ran."""
    with engine.begin() as connection:
        msg_ids = (
            connection.execute(
                sa.text("SELECT msg_id FROM pgmq.read(:queue, :vt, 10)"),
                {"queue": flow_slug, "vt": visibility},
            )
            .scalars()
            .all()
        )
        tasks = (
            connection.execute(
                sa.text(
                    "SELECT run_id, step_slug, task_index, input"
                    " FROM pgflow.start_tasks(:flow, CAST(:ids AS bigint[]), :worker)"
                ),
                {"flow": flow_slug, "ids": list(msg_ids), "worker": worker_id},
            )
            .mappings()
            .all()
        )
    for task in tasks:
        _run_task(engine, handlers[task["step_slug"]], task)
    return len(tasks)


def drive(
    engine: Engine,
    flow_slug: str,
    steps: dict[str, tuple[list[str], Handler]],
    run_id: uuid.UUID,
    *,
    deadline_s: float = 30.0,
) -> dict[str, Any]:
    """Work the flow's queue until ``run_id`` is no longer ``started``; return the run row."""
    worker_id = register_worker(engine, flow_slug)
    handlers = {slug: handler for slug, (_deps, handler) in steps.items()}
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        with engine.begin() as connection:
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
        if not work_once(engine, flow_slug, handlers, worker_id):
            time.sleep(0.02)
    raise TimeoutError(f"run {run_id} still started after {deadline_s} s")


def _run_task(engine: Engine, handler: Handler, task: Any) -> None:
    key = {"run": task["run_id"], "step": task["step_slug"], "index": task["task_index"]}
    with engine.begin() as connection:
        try:
            output = handler(task["input"])
        except Exception as exc:
            connection.execute(
                sa.text("SELECT pgflow.fail_task(:run, :step, :index, :error)"),
                {**key, "error": f"{type(exc).__name__}: {exc}"},
            )
        else:
            connection.execute(
                sa.text("SELECT pgflow.complete_task(:run, :step, :index, CAST(:output AS jsonb))"),
                {**key, "output": json.dumps(output)},
            )


def main() -> None:
    from pgflow.schema import install  # noqa: PLC0415
    from pgflow.testing import temporary_database  # noqa: PLC0415

    with temporary_database() as url:
        report = install(url)
        print(f"installed pgflow schema into {url.database} ({len(report.applied)} items)")
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            define_flow(connection, "greeting", GREETING_FLOW)
            run_id = start_run(connection, "greeting", {"name": "  ada lovelace "})
        print(f"started run {run_id}")
        run = drive(engine, "greeting", GREETING_FLOW, run_id)
        print(f"run {run['status']}: {run['output']}")
        engine.dispose()


if __name__ == "__main__":
    main()
