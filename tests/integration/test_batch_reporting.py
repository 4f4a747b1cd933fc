"""Completions recorded in batches (pgflow_python.complete_task_batch) match the one-by-one path."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pgflow import Flow, _sql, map_step, start_flow, step
from tests.helpers.database import register_flows
from tests.helpers.workers import running_worker, tasks_of, wait_until_finished


class Squares(Flow, slug="squares", max_attempts=1):
    @step
    def numbers(self, input: dict[str, int]) -> list[int]:
        return list(range(input["count"]))

    @map_step(array=numbers)
    def square(self, x: int) -> Any:
        return "poison" if x == 3 else x * x

    @step(depends_on=[square])
    def total(self, deps: dict[str, list[int]]) -> int:
        return sum(deps["square"])


def claim_all(connection: Connection, worker_id: uuid.UUID) -> list[dict[str, Any]]:
    rows = connection.execute(
        _sql.query("claim_task_batch"),
        {"flow_slug": "squares", "worker_id": worker_id, "qty": 100, "vt": 30, "margin": 5},
    ).mappings()
    return [row["task"] for row in rows]


def complete_batch(
    connection: Connection, worker_id: uuid.UUID, tasks: list[dict[str, Any]], outputs: list[Any]
) -> list[int]:
    rows = connection.execute(
        _sql.query("complete_task_batch"),
        {
            "worker_id": worker_id,
            "run_ids": [uuid.UUID(t["run_id"]) for t in tasks],
            "step_slugs": [t["step_slug"] for t in tasks],
            "task_indexes": [t["task_index"] for t in tasks],
            "outputs": [json.dumps(o) for o in outputs],
        },
    )
    return sorted(position for position in rows.scalars() if position is not None)


def complete_one(connection: Connection, task: dict[str, Any], output: Any) -> None:
    """Upstream's single-task path, as a TypeScript worker reports."""
    connection.execute(
        sa.text(
            "SELECT pgflow.complete_task(:run_id, :step_slug, :task_index, CAST(:output AS jsonb))"
        ),
        {
            "run_id": uuid.UUID(task["run_id"]),
            "step_slug": task["step_slug"],
            "task_index": task["task_index"],
            "output": json.dumps(output),
        },
    )


def final_state(engine: Engine, run_id: uuid.UUID) -> tuple[Any, ...]:
    with engine.begin() as connection:
        run = connection.execute(
            sa.text("SELECT status, output, remaining_steps FROM pgflow.runs WHERE run_id = :id"),
            {"id": run_id},
        ).one()
        steps = connection.execute(
            sa.text(
                "SELECT step_slug, status, remaining_tasks, initial_tasks FROM pgflow.step_states"
                " WHERE run_id = :id ORDER BY step_slug"
            ),
            {"id": run_id},
        ).all()
    tasks = [
        (t["step_slug"], t["task_index"], t["status"], t["output"])
        for t in tasks_of(engine, run_id)
    ]
    return tuple(run), [tuple(s) for s in steps], tasks


def drive(engine: Engine, *, batched: bool) -> uuid.UUID:
    """Run one Squares run by hand, completing each wave of tasks in a batch or one by one."""
    worker_id = uuid.uuid4()
    with engine.begin() as connection:
        connection.execute(
            _sql.query("register_worker"),
            {"worker_id": worker_id, "queue_name": "squares", "function_name": "test"},
        )
        run_id = start_flow(connection, Squares, {"count": 4})
    while True:
        with engine.begin() as connection:
            tasks = claim_all(connection, worker_id)
            if not tasks:
                return run_id
            outputs = [
                list(range(4))
                if t["step_slug"] == "numbers"
                else t["input"] ** 2
                if t["step_slug"] == "square"
                else 14
                for t in tasks
            ]
            if batched:
                assert complete_batch(connection, worker_id, tasks, outputs) == list(
                    range(1, len(tasks) + 1)
                )
            else:
                for task, output in zip(tasks, outputs, strict=True):
                    complete_one(connection, task, output)


def test_a_batch_of_completions_ends_like_single_completions(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Squares)
    batched = final_state(pgflow_engine, drive(pgflow_engine, batched=True))
    single = final_state(pgflow_engine, drive(pgflow_engine, batched=False))
    assert batched == single
    assert batched[0] == ("completed", {"total": 14}, 0)
    assert ("square", "completed", 0, 4) in batched[1]  # all four map tasks counted


def test_a_batch_records_only_the_tasks_the_worker_still_holds(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Squares)
    mine, other = uuid.uuid4(), uuid.uuid4()
    with pgflow_engine.begin() as connection:
        for worker_id in (mine, other):
            connection.execute(
                _sql.query("register_worker"),
                {"worker_id": worker_id, "queue_name": "squares", "function_name": "test"},
            )
        first = start_flow(connection, Squares, {"count": 1})
        second = start_flow(connection, Squares, {"count": 1})
    with pgflow_engine.begin() as connection:
        tasks = claim_all(connection, mine)
        assert len(tasks) == 2
        # The second run's task was recovered and given to another worker meanwhile.
        connection.execute(
            sa.text("UPDATE pgflow.step_tasks SET last_worker_id = :other WHERE run_id = :id"),
            {"other": other, "id": second},
        )
        tasks.sort(key=lambda t: t["run_id"] != str(first))
        assert complete_batch(connection, mine, tasks, [[0], [0]]) == [1]
    statuses = {r: tasks_of(pgflow_engine, r)[0]["status"] for r in (first, second)}
    assert statuses == {first: "completed", second: "started"}


def test_arrays_of_different_lengths_are_refused(pgflow_engine: Engine) -> None:
    with pgflow_engine.begin() as connection, pytest.raises(sa.exc.DBAPIError, match="same length"):
        connection.execute(
            sa.text(
                "SELECT pgflow_python.complete_task_batch(gen_random_uuid(),"
                " ARRAY[gen_random_uuid()], ARRAY['a', 'b'], ARRAY[0], ARRAY['1'::jsonb])"
            )
        )


@pytest.mark.anyio
async def test_an_output_the_database_refuses_fails_only_its_task(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Squares)
    with pgflow_engine.begin() as connection:
        # Stands for any rule of the application's database (a constraint, a trigger).
        connection.execute(
            sa.text(
                """
                CREATE FUNCTION public.refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                  IF NEW.output = '"poison"' THEN RAISE EXCEPTION 'poison is not allowed'; END IF;
                  RETURN NEW;
                END $$;
                CREATE TRIGGER refuse_poison BEFORE UPDATE ON pgflow.step_tasks
                FOR EACH ROW EXECUTE FUNCTION public.refuse_poison();
                """
            )
        )
        run_id = start_flow(connection, Squares, {"count": 8})
    async with running_worker(pgflow_engine, Squares, concurrency=8, batch_size=8):
        run = await wait_until_finished(pgflow_engine, run_id)
    assert run["status"] == "failed"
    squares = {
        t["task_index"]: t for t in tasks_of(pgflow_engine, run_id) if t["step_slug"] == "square"
    }
    assert squares[3]["status"] == "failed"
    assert "the database refused the output" in squares[3]["error_message"]
    assert "poison is not allowed" in squares[3]["error_message"]
    # Tasks reported in the same batches as the poisoned one were still recorded.
    assert sum(t["status"] == "completed" for t in squares.values()) >= 1
