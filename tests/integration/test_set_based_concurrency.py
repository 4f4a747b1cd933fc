"""Set-based completions from two workers and upstream's one-by-one complete_task from a third
(as a TypeScript worker calls it) on the same runs at the same time: no deadlock, no lost or
doubled counts, every run completes with the output upstream computes."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb
from sqlalchemy.engine import URL

from tests.helpers.database import libpq_url
from tests.helpers.differential import Arm, FlowShape, StepShape

FLOW = FlowShape(
    slug="shared_fanout",
    steps=(
        StepShape("numbers", (), is_map=False),
        StepShape("double", ("numbers",), is_map=True),
        StepShape("total", ("double", "numbers"), is_map=False),
    ),
)
RUNS = 24


def _output(step_slug: str, task_input: Any) -> Any:
    if step_slug == "numbers":
        return list(range(task_input["run"]["n"]))
    if step_slug == "double":
        return task_input * 2
    return sum(task_input["double"]) + len(task_input["numbers"])


def _work(conninfo: str, worker_id: uuid.UUID, set_based: bool, deadline: float) -> int:
    """Claim and complete until nothing is left; returns the number of tasks completed."""
    done = 0
    with psycopg.connect(conninfo, autocommit=True) as connection:
        while time.monotonic() < deadline:
            with connection.transaction():
                # Ours claim through start_claimed_tasks, the other through upstream's start_tasks.
                claim = ("pgflow_python", "claim_task_batch")
                if not set_based:
                    claim = ("pgflow_oracles", "claim_tasks")
                claimed = connection.execute(
                    sql.SQL("SELECT task FROM {}(%s, %s, 7, 30, 5)").format(sql.Identifier(*claim)),
                    (FLOW.slug, worker_id),
                ).fetchall()
            if not claimed:
                left = connection.execute(
                    "SELECT count(*) FROM pgflow.runs"
                    " WHERE flow_slug = %s AND status <> 'completed'",
                    (FLOW.slug,),
                ).fetchone()
                if left == (0,):
                    return done
                time.sleep(0.01)
                continue
            tasks = [row[0] for row in claimed]
            outputs = [Jsonb(_output(t["step_slug"], t["input"])) for t in tasks]
            with connection.transaction():
                if set_based:
                    connection.execute(
                        "SELECT * FROM pgflow_python.complete_task_batch("
                        "%s, %s::uuid[], %s::text[], %s::int[], %s::jsonb[])",
                        (
                            worker_id,
                            [t["run_id"] for t in tasks],
                            [t["step_slug"] for t in tasks],
                            [t["task_index"] for t in tasks],
                            outputs,
                        ),
                    )
                else:
                    for task, output in zip(tasks, outputs, strict=True):
                        connection.execute(
                            "SELECT pgflow.complete_task(%s, %s, %s, %s)",
                            (task["run_id"], task["step_slug"], task["task_index"], output),
                        )
            done += len(tasks)
    raise AssertionError(f"worker {worker_id} ran out of time with {done} tasks done")


def test_set_based_and_upstream_workers_share_runs(pgflow_database: URL) -> None:
    conninfo = libpq_url(pgflow_database)
    setup = Arm(conninfo, set_based=True)
    try:
        setup.create_flow(FLOW)
        workers = [uuid.uuid4() for _ in range(3)]
        setup.register_workers(workers)
        run_ids = [uuid.uuid4() for _ in range(RUNS)]
        for number, run_id in enumerate(run_ids):
            setup.start_run(FLOW.slug, run_id, {"n": 1 + number % 6})

        deadline = time.monotonic() + 120
        counts: dict[int, int] = {}
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                counts[i] = _work(conninfo, workers[i], i < 2, deadline)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []

        expected_tasks = sum(2 + (1 + n % 6) for n in range(RUNS))
        assert sum(counts.values()) == expected_tasks
        runs = setup.execute(
            "SELECT run_id, status, output, remaining_steps FROM pgflow.runs"
            " WHERE run_id = ANY(%s)",
            (run_ids,),
        )
        by_id = {row[0]: row[1:] for row in runs}
        for number, run_id in enumerate(run_ids):
            n = 1 + number % 6
            assert by_id[run_id] == ("completed", {"total": n * (n - 1) + n}, 0)
        [(unfinished, queued_messages)] = setup.execute(
            "SELECT (SELECT count(*) FROM pgflow.step_tasks WHERE flow_slug = %s"
            "          AND status <> 'completed'),"
            "       (SELECT count(*) FROM pgmq.q_shared_fanout)",
            (FLOW.slug,),
        )
        assert (unfinished, queued_messages) == (0, 0)
    finally:
        setup.close()
