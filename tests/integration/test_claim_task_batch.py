"""pgflow_python.claim_task_batch (start_claimed_tasks, a cached plan) against the tests' oracle
pgflow_oracles.claim_tasks, which starts the same messages through upstream's own start_tasks:
the same records, timeouts and attempt numbers handed out, the same reservations on the queue,
the same rows afterwards. The scenario covers root and dependent maps, fan-in of a map and a
single step, step and flow timeouts, a retried task and a failed run whose tasks must not be
handed out."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg import sql

from tests.helpers.differential import Arm, FlowShape, Report, StepShape, arm_pair

WORKER = uuid.UUID("00000000-0000-4000-8000-0000000000c1")
FLOW = FlowShape(
    slug="claims",
    steps=(
        StepShape("items", (), is_map=True, timeout=7),
        StepShape("words", (), is_map=False, max_attempts=1),
        StepShape("double", ("items",), is_map=True),
        StepShape("total", ("double", "words"), is_map=False, timeout=11),
    ),
    max_attempts=2,
)
RESERVATION, MARGIN = 30, 5
# The tests' per-task claim through upstream's start_tasks (tests/sql/oracles.sql).
ORACLE = ("pgflow_oracles", "claim_tasks")


@pytest.fixture
def arms(pgflow_server: Any, pgflow_template_database: str) -> Iterator[tuple[Arm, Arm]]:
    with arm_pair(pgflow_server.url, pgflow_template_database, [WORKER]) as pair:
        for arm in pair:
            arm.create_flow(FLOW)
        yield pair


def _claim(arm: Arm, batch: int, slug: str = FLOW.slug) -> list[Any]:
    claim = ("pgflow_python", "claim_task_batch") if arm.set_based else ORACLE
    rows = arm.execute(
        sql.SQL("SELECT task, task_timeout, attempt FROM {}(%s, %s, %s, %s, %s)").format(
            sql.Identifier(*claim)
        ),
        (slug, WORKER, batch, RESERVATION, MARGIN),
    )
    # Message ids depend on the order of inserts; which task a record is for does not.
    return sorted(
        (
            ({k: v for k, v in task.items() if k != "msg_id"}, timeout, attempt)
            for task, timeout, attempt in rows
        ),
        key=lambda record: (record[0]["run_id"], record[0]["step_slug"], record[0]["task_index"]),
    )


def _reservations(arm: Arm, slug: str = FLOW.slug) -> list[Any]:
    """Each queued message: its task, read count and how long it stays invisible: the task's
    timeout plus the margin after a claim (within 3 s: the two databases are read at slightly
    different times on a loaded machine), visible now, or something else (the raw seconds)."""
    return arm.execute(
        "SELECT t.run_id, t.step_slug, t.task_index, m.read_ct,"
        " CASE WHEN m.vt <= clock_timestamp() THEN 'visible'"
        "  WHEN m.vt - clock_timestamp() BETWEEN make_interval(secs => r.seconds - 3)"
        "   AND make_interval(secs => r.seconds) THEN 'reserved for timeout + margin'"
        "  ELSE extract(epoch FROM m.vt - clock_timestamp())::text END"
        f" FROM pgmq.q_{slug} m JOIN pgflow.step_tasks t"
        f"   ON t.flow_slug = '{slug}' AND t.message_id = m.msg_id"
        " JOIN pgflow.steps s ON s.flow_slug = t.flow_slug AND s.step_slug = t.step_slug"
        " JOIN pgflow.flows f ON f.flow_slug = t.flow_slug"
        " CROSS JOIN LATERAL (SELECT coalesce(s.opt_timeout, f.opt_timeout) + %s AS seconds) r"
        " ORDER BY t.run_id, t.step_slug, t.task_index",
        (MARGIN,),
    )


def test_claim_task_batch_matches_upstream_start_tasks(arms: tuple[Arm, Arm]) -> None:
    oracle, ours = arms
    run_ids = [uuid.UUID(int=(0xC1A1 << 64) | n) for n in range(3)]
    for arm in arms:
        for n, run_id in enumerate(run_ids):
            arm.start_run(FLOW.slug, run_id, [n, n + 1, n + 2][: n + 1])

    handed_out = 0
    for round_number in range(12):
        records = [_claim(arm, batch=4) for arm in arms]
        assert records[0] == records[1], f"round {round_number}: different records"
        assert _reservations(oracle) == _reservations(ours)
        if not records[0]:
            break
        handed_out += len(records[0])
        reports = []
        for task, _, attempt in records[0]:
            run_id, slug = uuid.UUID(task["run_id"]), task["step_slug"]
            if slug == "words" and run_id == run_ids[2]:
                # max_attempts 1: the run fails, its other queued tasks are never handed out.
                reports.append(Report(run_id, slug, task["task_index"], error="no words"))
            elif slug == "items" and task["task_index"] == 0 and attempt == 1:
                reports.append(Report(run_id, slug, 0, error="retry me"))
            else:
                output = task["input"] * 2 if slug in ("items", "double") else {"n": 1}
                reports.append(Report(run_id, slug, task["task_index"], output))
        for failing in (True, False):
            batch = [r for r in reports if (r.error is not None) == failing]
            if batch:
                for arm in arms:
                    # A retry becomes visible after its backoff: skip the wait.
                    arm.report(WORKER, batch)
                    arm.execute("UPDATE pgmq.q_claims SET vt = clock_timestamp()")
        expected = oracle.snapshot([FLOW.slug], run_ids)
        actual = ours.snapshot([FLOW.slug], run_ids)
        for table in expected:
            assert actual[table] == expected[table], f"round {round_number}: {table} differs"

    statuses = [row[2] for row in ours.snapshot([FLOW.slug], run_ids)["runs"]]
    assert statuses == ["completed", "completed", "failed"]
    [(attempts,)] = ours.execute("SELECT max(attempts_count) FROM pgflow.step_tasks")
    assert attempts == 2, "no task was retried"
    assert handed_out >= 10


def test_a_claim_commits_without_waiting_for_its_wal_flush(arms: tuple[Arm, Arm]) -> None:
    """synchronous_commit is off for the claim's own transaction (a lost claim is claimed again)
    and only for it: the session's setting is back once that transaction ends."""
    _, ours = arms
    ours.start_run(FLOW.slug, uuid.UUID(int=0xC1A2), [1])
    connection = ours.connection
    with connection.transaction():
        [(before,)] = ours.execute("SELECT current_setting('synchronous_commit')")
        assert _claim(ours, batch=1), "nothing was claimed"
        [(during,)] = ours.execute("SELECT current_setting('synchronous_commit')")
    [(after,)] = ours.execute("SELECT current_setting('synchronous_commit')")
    assert during == "off"
    assert after == before


# Every step has the flow's timeout: the read reserves each message for good.
UNIFORM = FlowShape(
    slug="uniform",
    steps=(StepShape("items", (), is_map=True), StepShape("total", ("items",), is_map=False)),
)


def test_a_flow_with_one_timeout_is_reserved_by_the_read_alone(arms: tuple[Arm, Arm]) -> None:
    """Where all steps share a timeout, the claim reserves each message once (the read), not
    twice (the read, then set_vt_batch), with the same records and reservations as upstream."""
    oracle, ours = arms
    run_id = uuid.UUID(int=0xC1A3)
    for arm in arms:
        arm.create_flow(UNIFORM)
        arm.start_run(UNIFORM.slug, run_id, [1, 2, 3])
    rounds = 0
    while True:
        claimed = []
        updates = []
        for arm in arms:
            # The session's count of updates not yet reported to the statistics: the
            # difference across the claim is what the claim updated.
            count = "SELECT pg_stat_get_xact_tuples_updated('pgmq.q_uniform'::regclass)"
            with arm.connection.transaction():
                [(before,)] = arm.execute(count)
                claimed.append(_claim(arm, batch=2, slug=UNIFORM.slug))
                [(after,)] = arm.execute(count)
            updates.append(after - before)
        assert claimed[0] == claimed[1], f"round {rounds}: different records"
        assert _reservations(oracle, UNIFORM.slug) == _reservations(ours, UNIFORM.slug)
        if not claimed[0]:
            break
        assert updates == [2 * len(claimed[0]), len(claimed[0])], "updates of the messages"
        reports = [
            Report(uuid.UUID(task["run_id"]), task["step_slug"], task["task_index"], 1)
            for task, _, _ in claimed[0]
        ]
        for arm in arms:
            arm.report(WORKER, reports)
        rounds += 1
    assert rounds == 3  # the map's three elements in two claims, then the fan-in
    expected = oracle.snapshot([UNIFORM.slug], [run_id])
    actual = ours.snapshot([UNIFORM.slug], [run_id])
    assert actual == expected
