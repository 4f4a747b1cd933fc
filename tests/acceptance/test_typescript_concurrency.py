"""A per-key concurrency limit holds for a TypeScript 0.8.1 worker (it calls upstream's
readMessages, start_tasks and complete_task directly) and for runs it starts: a held task's
message is invisible in the queue, and upstream's complete_task, called by Node, hands the slot
to the next task of the same tenant (extension/0080)."""

from __future__ import annotations

from collections import Counter

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import enqueue
from tests.helpers.database import register_flows
from tests.helpers.limited_flows import TenantSync
from tests.helpers.node import node_worker, typescript_start


def test_a_typescript_worker_gets_at_most_two_tasks_per_tenant(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, TenantSync)
    for n in range(3):
        enqueue(pgflow_engine, TenantSync, {"tenant": "a", "n": n})
    typescript_start(pgflow_engine, "tenant_sync", [{"tenant": "a", "n": n} for n in range(3, 6)])
    typescript_start(pgflow_engine, "tenant_sync", [{"tenant": "b", "n": n} for n in range(2)])

    report = node_worker(pgflow_engine, "tenant_sync")

    # The Node worker finishes each batch it reads before reading again, so a batch is what it
    # had in flight at once.
    batches = Counter((a["batch"], a["input"]["run"]["tenant"]) for a in report["attempts"])
    assert max(batches.values()) == 2  # never more than the limit, and the limit used
    first = min(a["batch"] for a in report["attempts"])
    assert batches[(first, "a")] == batches[(first, "b")] == 2  # b is not behind a's backlog
    assert report["completed"] == 8
    with pgflow_engine.begin() as connection:
        statuses = connection.execute(sa.text("SELECT status FROM pgflow.runs")).scalars().all()
        held = connection.execute(sa.text("SELECT count(*) FROM pgflow_python.held_tasks"))
        assert held.scalar_one() == 0
    assert statuses == ["completed"] * 8
