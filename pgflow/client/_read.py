"""Reading runs: ``get_run`` and ``get_run_with_states``, sync and async.

An unknown run id gives ``None`` (as ``Session.get`` does for a missing row); only waiting for a
run raises :class:`UnknownRunError`, since there is nothing to wait for.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection

from pgflow._binds import AsyncBind, RunId, SyncBind, as_run_id, connection_for, run_async
from pgflow._sql import query
from pgflow.results import Run, RunWithStates, StepState, StepTask, TaskFailure


def get_run(bind: SyncBind, run_id: RunId) -> Run | None:
    """The run, or ``None`` if no run has this id (in what this bind's transaction can see)."""
    with connection_for(bind) as connection:
        return read_run(connection, as_run_id(run_id))


async def get_run_async(bind: AsyncBind, run_id: RunId) -> Run | None:
    return await run_async(bind, read_run, as_run_id(run_id))


def get_run_with_states(bind: SyncBind, run_id: RunId) -> RunWithStates | None:
    """The run with its step states and tasks (one consistent snapshot), or ``None``."""
    with connection_for(bind) as connection:
        return read_run_with_states(connection, as_run_id(run_id))


async def get_run_with_states_async(bind: AsyncBind, run_id: RunId) -> RunWithStates | None:
    return await run_async(bind, read_run_with_states, as_run_id(run_id))


def get_task_failures(bind: SyncBind, run_id: RunId) -> tuple[TaskFailure, ...]:
    """Every failed attempt of the run's tasks that a Python worker recorded, with exception
    type, message and traceback, in the order they happened (empty for an unknown run)."""
    with connection_for(bind) as connection:
        return read_task_failures(connection, as_run_id(run_id))


async def get_task_failures_async(bind: AsyncBind, run_id: RunId) -> tuple[TaskFailure, ...]:
    return await run_async(bind, read_task_failures, as_run_id(run_id))


def read_task_failures(connection: Connection, run_id: RunId) -> tuple[TaskFailure, ...]:
    rows = connection.execute(query("client_task_failures"), {"run_id": run_id}).all()
    return tuple(TaskFailure.from_json(row.failure) for row in rows)


def read_run(connection: Connection, run_id: RunId) -> Run | None:
    row = connection.execute(query("client_get_run"), {"run_id": run_id}).one_or_none()
    return None if row is None else Run.from_json(row.run)


def read_run_with_states(connection: Connection, run_id: RunId) -> RunWithStates | None:
    row = connection.execute(query("client_get_run_with_states"), {"run_id": run_id}).one_or_none()
    if row is None:
        return None
    return RunWithStates(
        run=Run.from_json(row.run),
        steps=tuple(StepState.from_json(step) for step in row.steps),
        tasks=tuple(StepTask.from_json(task) for task in row.tasks),
        failures=tuple(TaskFailure.from_json(failure) for failure in row.failures),
    )
