"""Helpers for worker tests: run a worker inside the test's event loop, wait for runs."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import sql_only_flow
from pgflow import telemetry
from pgflow.dsl import Flow, definition_of
from pgflow.worker import Worker, WorkerOptions
from pgflow.worker._store import WorkerStore


def start(engine: Engine, flow: type[Flow], flow_input: Any) -> uuid.UUID:
    with engine.begin() as connection:
        return sql_only_flow.start_run(connection, definition_of(flow).slug, flow_input)


@asynccontextmanager
async def running_worker(
    engine: Engine, *flows: type[Flow], store: WorkerStore | None = None, **options: Any
) -> AsyncIterator[Worker]:
    """A worker serving ``flows`` in the test's event loop, registered and claiming."""
    defaults: dict[str, Any] = {"poll_interval": 0.5, "shutdown_timeout": 5.0}
    worker = Worker(
        list(flows), engine, options=WorkerOptions(**{**defaults, **options}), store=store
    )
    async with anyio.create_task_group() as group:
        await group.start(worker.serve)
        yield worker
        worker.stop()


def _run_row(engine: Engine, run_id: uuid.UUID) -> dict[str, Any]:
    with engine.begin() as connection:
        return dict(
            connection.execute(
                sa.text("SELECT status, output FROM pgflow.runs WHERE run_id = :id"), {"id": run_id}
            )
            .mappings()
            .one()
        )


def _diagnosis(engine: Engine, run_id: uuid.UUID) -> str:
    """The run's steps, tasks and queued messages, for the failure message of a stuck run."""
    with engine.begin() as connection:
        flow_slug = connection.execute(
            sa.text("SELECT flow_slug FROM pgflow.runs WHERE run_id = :id"), {"id": run_id}
        ).scalar_one()
        steps = connection.execute(
            sa.text(
                "SELECT step_slug, status, remaining_deps, remaining_tasks, initial_tasks"
                " FROM pgflow.step_states WHERE run_id = :id ORDER BY step_slug"
            ),
            {"id": run_id},
        ).all()
        tasks = connection.execute(
            sa.text(
                "SELECT step_slug, task_index, status, attempts_count, message_id, last_worker_id"
                " FROM pgflow.step_tasks WHERE run_id = :id ORDER BY step_slug, task_index"
            ),
            {"id": run_id},
        ).all()
        queue_table = "pgmq." + connection.dialect.identifier_preparer.quote("q_" + flow_slug)
        messages = connection.execute(
            sa.text(
                "SELECT msg_id, read_ct, vt - now() AS visible_in, message FROM "
                + queue_table
                + " WHERE message->>'run_id' = :id ORDER BY msg_id"
            ),
            {"id": str(run_id)},
        ).all()
    sections = {"steps": steps, "tasks": tasks, "messages": messages}
    return "\n".join(f"{name}:\n" + "\n".join(map(str, rows)) for name, rows in sections.items())


async def wait_until_finished(
    engine: Engine, run_id: uuid.UUID, *, timeout: float = 20.0
) -> dict[str, Any]:
    """The run once it is no longer ``started``; fails the test at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        run = await anyio.to_thread.run_sync(_run_row, engine, run_id)
        if run["status"] != "started":
            return run
        if time.monotonic() > deadline:
            state = await anyio.to_thread.run_sync(_diagnosis, engine, run_id)
            raise AssertionError(f"run {run_id} still started after {timeout} s\n{state}")
        await anyio.sleep(0.05)


def tasks_of(engine: Engine, run_id: uuid.UUID) -> list[dict[str, Any]]:
    with engine.begin() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT step_slug, task_index, status, attempts_count, error_message, output"
                " FROM pgflow.step_tasks WHERE run_id = :id ORDER BY step_slug, task_index"
            ),
            {"id": run_id},
        ).mappings()
        return [dict(r) for r in rows]


class EventLog:
    """Collects telemetry events (name, fields, monotonic time) while active."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, Any], float]] = []
        self._unsubscribe = telemetry.subscribe(self._record)

    def _record(self, event: str, fields: dict[str, Any]) -> None:
        self.events.append((event, dict(fields), time.monotonic()))

    def named(self, event: str) -> list[tuple[dict[str, Any], float]]:
        return [(fields, at) for name, fields, at in self.events if name == event]

    def close(self) -> None:
        self._unsubscribe()


def seconds_between(times: Sequence[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]
