"""prune: finished runs go with every row and message they own; started runs stay untouched."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any, cast

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import create_async_engine

import sql_only_flow
from pgflow import Flow, map_step, start_flow, step
from pgflow.operations import cancel_run, prune, prune_async, resume_run, retry_run
from tests.helpers.database import register_flows

OWN_TABLES = (
    "run_cancellations",
    "run_lineage",
    "run_resumes",
    "resumed_tasks",
    "idempotency_keys",
    "task_requeues",
    "task_failures",
)


class Batch(Flow, slug="batch", max_attempts=1, base_delay=1):
    @map_step
    def item(self, item: int) -> int:
        return item * 10

    @step(depends_on=[item])
    def total(self, deps: dict[str, list[int]]) -> int:
        return sum(deps["item"])


HANDLERS: dict[str, tuple[list[str], sql_only_flow.Handler]] = {
    "item": ([], lambda item: cast(int, item) * 10),
    "total": (["item"], lambda task: sum(task["item"])),
}


def failing(step_slug: str) -> dict[str, tuple[list[str], sql_only_flow.Handler]]:
    def explode(task: Any) -> Any:
        raise RuntimeError("boom")

    return {
        slug: (deps, explode if slug == step_slug else h) for slug, (deps, h) in HANDLERS.items()
    }


def start(engine: Engine, items: list[int], **options: Any) -> uuid.UUID:
    with engine.begin() as connection:
        return start_flow(connection, Batch, items, **options)


def drive(engine: Engine, run_id: uuid.UUID, handlers: Any = None) -> str:
    finished = sql_only_flow.drive(engine, "batch", handlers or HANDLERS, run_id)
    return str(finished["status"])


def rows(engine: Engine, statement: str, **params: Any) -> list[Any]:
    with engine.begin() as connection:
        return list(connection.execute(sa.text(statement), params).all())


def count(engine: Engine, statement: str, **params: Any) -> int:
    return int(rows(engine, statement, **params)[0][0])


def everything_about(engine: Engine, run_id: uuid.UUID) -> dict[str, Any]:
    """Every row any table holds for the run, messages included."""
    found: dict[str, Any] = {}
    for table in ("pgflow.runs", "pgflow.step_states", "pgflow.step_tasks"):
        found[table] = rows(
            engine,
            f"SELECT to_jsonb(x) FROM {table} AS x WHERE x.run_id = :r ORDER BY 1::text",
            r=run_id,
        )
    for table in ("pgmq.q_batch", "pgmq.a_batch"):
        found[table] = rows(
            engine,
            f"SELECT msg_id, message FROM {table} WHERE message->>'run_id' = :r ORDER BY msg_id",
            r=str(run_id),
        )
    for table in OWN_TABLES:
        found[f"pgflow_python.{table}"] = rows(
            engine,
            f"SELECT to_jsonb(x) FROM pgflow_python.{table} AS x WHERE x.run_id = :r",
            r=run_id,
        )
    return found


def age(engine: Engine, *run_ids: uuid.UUID, by: timedelta = timedelta(days=40)) -> None:
    """Let time pass for finished runs: shift the times prune reads (constraints still hold)."""
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE pgflow.runs SET started_at = started_at - :by,"
                " completed_at = completed_at - :by, failed_at = failed_at - :by"
                " WHERE run_id = ANY(:ids)"
            ),
            {"by": by, "ids": list(run_ids)},
        )


def holds_nothing(found: dict[str, Any]) -> bool:
    return all(not value for value in found.values())


def add_worker(engine: Engine, silent_for: timedelta) -> uuid.UUID:
    worker_id = uuid.uuid4()
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO pgflow.workers (worker_id, queue_name, function_name,"
                " last_heartbeat_at) VALUES (:w, 'batch', 'test', now() - :silent)"
            ),
            {"w": worker_id, "silent": silent_for},
        )
    return worker_id


def test_prune_removes_finished_runs_with_everything_and_leaves_started_runs(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Batch)
    completed = start(pgflow_engine, [1, 2, 3], idempotency_key="order-1")
    assert drive(pgflow_engine, completed) == "completed"
    failed = start(pgflow_engine, [1, 2])
    assert drive(pgflow_engine, failed, failing("total")) == "failed"
    retried = retry_run(pgflow_engine, failed).new_run_id
    assert retried is not None
    assert drive(pgflow_engine, retried) == "completed"
    resumed = start(pgflow_engine, [4, 5])
    assert drive(pgflow_engine, resumed, failing("item")) == "failed"
    resume_run(pgflow_engine, resumed)
    assert drive(pgflow_engine, resumed) == "completed"
    cancelled = start(pgflow_engine, [6])
    cancel_run(pgflow_engine, cancelled, reason="no longer needed")

    # A started run with one element done, one in flight and one still queued.
    running = start(pgflow_engine, [7, 8, 9])
    worker = sql_only_flow.register_worker(pgflow_engine, "batch")
    with pgflow_engine.begin() as connection:
        ids = connection.execute(sa.text("SELECT msg_id FROM pgmq.read('batch', 30, 2)")).scalars()
        connection.execute(
            sa.text("SELECT * FROM pgflow.start_tasks('batch', :ids, :w)"),
            {"ids": list(ids), "w": worker},
        )
        connection.execute(
            sa.text("SELECT pgflow.complete_task(:r, 'item', 0, '70')"), {"r": running}
        )
    dead_worker = add_worker(pgflow_engine, timedelta(days=40))

    pruned = [completed, failed, retried, resumed, cancelled]
    age(pgflow_engine, *pruned)
    assert all(not holds_nothing(everything_about(pgflow_engine, run)) for run in pruned)
    assert everything_about(pgflow_engine, resumed)["pgflow_python.resumed_tasks"]
    running_before = everything_about(pgflow_engine, running)
    assert running_before["pgmq.q_batch"]
    assert running_before["pgmq.a_batch"]

    window = timedelta(days=30)
    preview = prune(pgflow_engine, older_than=window, dry_run=True)
    assert preview.dry_run
    assert preview.runs == 5
    assert preview.workers == 1
    assert all(not holds_nothing(everything_about(pgflow_engine, run)) for run in pruned)

    report = prune(pgflow_engine, older_than=window, batch_size=2)
    assert report.batches >= 3
    counted = ("runs", "step_states", "step_tasks", "messages", "extension_rows", "workers")
    assert {k: getattr(report, k) for k in counted} == {k: getattr(preview, k) for k in counted}
    assert report.runs == 5
    assert report.step_tasks == 3 + 1 + 2 + 1 + 2 + 1 + 2 + 1 + 1
    assert report.messages >= report.step_tasks, "every task's message, archived or queued"
    assert all(holds_nothing(everything_about(pgflow_engine, run)) for run in pruned)
    assert everything_about(pgflow_engine, running) == running_before
    workers = {row[0] for row in rows(pgflow_engine, "SELECT worker_id FROM pgflow.workers")}
    assert worker in workers
    assert dead_worker not in workers

    # Upstream's functions finish the run that was left alone: the in-flight element reports,
    # the queued one and the last step run.
    with pgflow_engine.begin() as connection:
        connection.execute(
            sa.text("SELECT pgflow.complete_task(:r, 'item', 1, '80')"), {"r": running}
        )
    assert drive(pgflow_engine, running) == "completed"
    assert rows(pgflow_engine, "SELECT output FROM pgflow.runs WHERE run_id = :r", r=running) == [
        ({"total": 240},)
    ]


def test_prune_keeps_what_the_window_statuses_and_flows_exclude(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Batch)
    old_completed, recent_completed = start(pgflow_engine, [1]), start(pgflow_engine, [2])
    drive(pgflow_engine, old_completed)
    drive(pgflow_engine, recent_completed)
    old_failed = start(pgflow_engine, [1])
    drive(pgflow_engine, old_failed, failing("item"))
    age(pgflow_engine, old_completed, old_failed)
    recent_worker = add_worker(pgflow_engine, timedelta(hours=1))
    window = timedelta(days=30)

    assert prune(pgflow_engine, older_than=window, flows=["other"]).runs == 0
    report = prune(pgflow_engine, older_than=window, statuses=["failed"])
    assert report.runs == 1
    assert report.workers == 0
    assert holds_nothing(everything_about(pgflow_engine, old_failed))
    assert not holds_nothing(everything_about(pgflow_engine, old_completed))
    assert prune(pgflow_engine, older_than=window, flows=["batch"]).runs == 1
    assert holds_nothing(everything_about(pgflow_engine, old_completed))
    assert not holds_nothing(everything_about(pgflow_engine, recent_completed))
    assert (
        count(
            pgflow_engine,
            "SELECT count(*) FROM pgflow.workers WHERE worker_id = :w",
            w=recent_worker,
        )
        == 1
    )


def test_prune_refuses_started_and_unknown_statuses(pgflow_engine: Engine) -> None:
    with pytest.raises(ValueError, match="never pruned"):
        prune(pgflow_engine, older_than=timedelta(0), statuses=["started"])
    with pytest.raises(ValueError, match="never pruned"):
        prune(pgflow_engine, older_than=timedelta(0), statuses=["done"])
    with pytest.raises(ValueError, match="0 or more"):
        prune(pgflow_engine, older_than=timedelta(days=-1))


@pytest.mark.parametrize("dry_run", [False, True], ids=["prune", "dry-run"])
def test_a_window_longer_than_any_history_prunes_nothing_and_the_transaction_goes_on(
    pgflow_engine: Engine, dry_run: bool
) -> None:
    register_flows(pgflow_engine, Batch)
    done = start(pgflow_engine, [1])
    drive(pgflow_engine, done)
    age(pgflow_engine, done)
    with pgflow_engine.begin() as connection:
        report = prune(connection, older_than=timedelta.max, dry_run=dry_run)
        assert (report.runs, report.step_tasks) == (0, 0)
        # The caller's transaction is still usable.
        assert prune(connection, older_than=timedelta(days=30), dry_run=dry_run).runs == 1


@pytest.mark.anyio
async def test_prune_async_gives_each_batch_its_own_transaction(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Batch)
    for items in ([1], [2], [3]):
        drive(pgflow_engine, start(pgflow_engine, items))
    engine = create_async_engine(pgflow_engine.url, poolclass=sa.pool.NullPool)
    try:
        report = await prune_async(engine, older_than=timedelta(0), batch_size=1)
    finally:
        await engine.dispose()
    assert report.runs == 3
    assert report.batches == 4 + 1  # 3 runs, an empty page of completed ones, none failed
    assert count(pgflow_engine, "SELECT count(*) FROM pgmq.a_batch") == 0
