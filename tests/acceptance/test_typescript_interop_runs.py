"""TypeScript pgflow and pgflow-python on one database: starting runs, retries across languages."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import Flow, NonRetryableError, start_flow, step
from pgflow.client import get_task_failures
from tests.helpers.database import register_flows
from tests.helpers.interop_flows import Interop
from tests.helpers.node import node_worker, typescript_start
from tests.helpers.workers import running_worker, tasks_of, wait_until_finished

pytestmark = pytest.mark.anyio

VOLATILE = {"run_id", "msg_id", "message_id", "last_worker_id"}


def comparable(value: Any) -> Any:
    """``value`` without ids and timestamps, which differ between any two runs."""
    if isinstance(value, dict):
        kept = {k: v for k, v in value.items() if k not in VOLATILE and not k.endswith("_at")}
        return {k: comparable(v) for k, v in kept.items()}
    if isinstance(value, list):
        return [comparable(v) for v in value]
    return value


def stored(engine: Engine, run_id: str | uuid.UUID) -> dict[str, Any]:
    """Everything the database holds about one run: its row, steps, tasks and queued messages."""
    with engine.begin() as connection:
        snapshot = connection.execute(
            sa.text(
                """
                SELECT
                  (SELECT to_jsonb(r) FROM pgflow.runs r WHERE r.run_id = CAST(:id AS uuid)) AS run,
                  (SELECT jsonb_agg(to_jsonb(s) ORDER BY s.step_slug)
                     FROM pgflow.step_states s WHERE s.run_id = CAST(:id AS uuid)) AS steps,
                  (SELECT jsonb_agg(to_jsonb(t) ORDER BY t.step_slug, t.task_index)
                     FROM pgflow.step_tasks t WHERE t.run_id = CAST(:id AS uuid)) AS tasks,
                  (SELECT coalesce(jsonb_agg(jsonb_build_object(
                            'message', q.message, 'read_ct', q.read_ct, 'headers', q.headers)
                          ORDER BY q.message->>'step_slug', q.message->>'task_index'), '[]')
                     FROM pgmq.q_interop q
                     WHERE q.message->>'run_id' = CAST(:id AS text)) AS messages
                """
            ),
            {"id": str(run_id)},
        )
        return dict(snapshot.mappings().one())


async def test_runs_started_by_typescript_and_by_python_are_indistinguishable(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Interop)
    inputs = [{"n": 1}, {"n": 2, "note": "ünïcode"}, {"n": 3, "nested": {"list": [1, None]}}]
    typescript_runs = typescript_start(pgflow_engine, "interop", inputs)
    with pgflow_engine.begin() as connection:
        python_runs = [start_flow(connection, Interop, flow_input) for flow_input in inputs]

    pairs = list(zip(typescript_runs, python_runs, strict=True))
    for ts_run, py_run in pairs:
        ts_state, py_state = stored(pgflow_engine, ts_run), stored(pgflow_engine, py_run)
        assert ts_state["messages"], "the root step's message is queued"
        assert comparable(ts_state) == comparable(py_state)
        assert ts_state["messages"][0]["message"]["run_id"] == ts_run

    async with running_worker(pgflow_engine, Interop):
        for ts_run, py_run in pairs:
            ts_finished = await wait_until_finished(pgflow_engine, uuid.UUID(ts_run))
            assert ts_finished == await wait_until_finished(pgflow_engine, py_run)
    for ts_run, py_run in pairs:
        ts_state, py_state = stored(pgflow_engine, ts_run), stored(pgflow_engine, py_run)
        assert ts_state["run"]["status"] == "completed"
        assert comparable(ts_state) == comparable(py_state)


class PythonSide:
    fails = False
    attempts: list[float] = []  # noqa: RUF012 - test-wide record, reset per test


class Relay(Flow, slug="relay", max_attempts=3, base_delay=1):
    @step
    def flaky(self, input: dict[str, int]) -> dict[str, Any]:
        PythonSide.attempts.append(time.time())
        if PythonSide.fails:
            raise RuntimeError("python failed flaky")
        return {"by": "python", "n": input["n"]}


@pytest.fixture
def relay_run(pgflow_engine: Engine) -> uuid.UUID:
    PythonSide.attempts = []
    register_flows(pgflow_engine, Relay)
    with pgflow_engine.begin() as connection:
        return start_flow(connection, Relay, {"n": 7})


async def python_attempt(
    engine: Engine, run_id: uuid.UUID, *, fails: bool, done: Callable[[dict[str, Any]], bool]
) -> None:
    """Run a Python worker until the relay task reaches ``done``."""
    PythonSide.fails = fails
    deadline = time.monotonic() + 30
    async with running_worker(engine, Relay):
        while not done(tasks_of(engine, run_id)[0]):
            assert time.monotonic() < deadline, tasks_of(engine, run_id)
            await anyio.sleep(0.05)


def node_attempt(engine: Engine, *, fails: bool) -> float:
    report = node_worker(engine, "relay", maxTasks=1, fail=["flaky"] if fails else [])
    [attempt] = report["attempts"]
    return float(attempt["at"])


def requeued_after(attempts: int) -> Callable[[dict[str, Any]], bool]:
    return lambda task: task["attempts_count"] == attempts and task["status"] == "queued"


# Retry n (1-based) waits base_delay * 2^n seconds (upstream calculate_retry_delay); base_delay=1.
FIRST_RETRY_DELAY, SECOND_RETRY_DELAY = 2.0, 4.0
CLOCK_SLACK = 0.1  # Node's and Python's clocks are read at slightly different moments


async def test_a_step_failing_in_node_is_retried_in_python_then_in_node(
    pgflow_engine: Engine, relay_run: uuid.UUID
) -> None:
    first = await anyio.to_thread.run_sync(lambda: node_attempt(pgflow_engine, fails=True))
    assert tasks_of(pgflow_engine, relay_run)[0]["error_message"] == "node failed flaky"
    await python_attempt(pgflow_engine, relay_run, fails=True, done=requeued_after(2))
    [second] = PythonSide.attempts
    third = await anyio.to_thread.run_sync(lambda: node_attempt(pgflow_engine, fails=False))

    run = await wait_until_finished(pgflow_engine, relay_run)
    assert run == {"status": "completed", "output": {"flaky": {"by": "node", "n": 7}}}
    [task] = tasks_of(pgflow_engine, relay_run)
    assert (task["status"], task["attempts_count"]) == ("completed", 3)
    assert second - first >= FIRST_RETRY_DELAY - CLOCK_SLACK
    assert third - second >= SECOND_RETRY_DELAY - CLOCK_SLACK


async def test_a_step_failing_in_python_then_node_then_python_exhausts_max_attempts(
    pgflow_engine: Engine, relay_run: uuid.UUID
) -> None:
    await python_attempt(pgflow_engine, relay_run, fails=True, done=requeued_after(1))
    second = await anyio.to_thread.run_sync(lambda: node_attempt(pgflow_engine, fails=True))
    await python_attempt(
        pgflow_engine, relay_run, fails=True, done=lambda task: task["status"] == "failed"
    )
    first, third = PythonSide.attempts

    run = await wait_until_finished(pgflow_engine, relay_run)
    assert run == {"status": "failed", "output": None}
    [task] = tasks_of(pgflow_engine, relay_run)
    assert (task["attempts_count"], task["error_message"]) == (
        3,
        "RuntimeError: python failed flaky",
    )
    assert second - first >= FIRST_RETRY_DELAY - CLOCK_SLACK
    assert third - second >= SECOND_RETRY_DELAY - CLOCK_SLACK
    with pgflow_engine.begin() as connection:  # no message left: no worker can try a fourth time
        assert connection.execute(sa.text("SELECT count(*) FROM pgmq.q_relay")).scalar() == 0


class Gate(Flow, slug="gate", max_attempts=5, base_delay=1):
    @step
    def enrich(self, order: dict[str, int]) -> dict[str, Any]:
        return {"by": "python", "id": order["id"]}

    @step
    def check(self, order: dict[str, int]) -> None:
        raise NonRetryableError(f"order {order['id']} cannot pass")

    @step(depends_on=[enrich, check])
    def publish(self, deps: dict[str, Any]) -> str:
        return "published by python"


def set_visibility(engine: Engine, run_id: uuid.UUID, step_slug: str, seconds: int) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "SELECT pgmq.set_vt(flow_slug, message_id, :seconds) FROM pgflow.step_tasks"
                " WHERE run_id = :run_id AND step_slug = :step_slug"
            ),
            {"run_id": run_id, "step_slug": step_slug, "seconds": seconds},
        )


async def test_a_non_retryable_error_fails_the_run_while_node_holds_another_step(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Gate)
    with pgflow_engine.begin() as connection:
        run_id = start_flow(connection, Gate, {"id": 9})
    set_visibility(pgflow_engine, run_id, "check", 3600)  # for Node to take enrich, not check
    node_report: dict[str, Any] = {}

    async def node_holds_enrich() -> None:
        node_report.update(
            await anyio.to_thread.run_sync(
                lambda: node_worker(
                    pgflow_engine, "gate", maxTasks=1, slow={"enrich": 15_000}, visibility=120
                )
            )
        )

    async with anyio.create_task_group() as group:
        group.start_soon(node_holds_enrich)
        deadline = time.monotonic() + 30
        while tasks_of(pgflow_engine, run_id)[1]["status"] != "started":  # enrich, by Node
            assert time.monotonic() < deadline, tasks_of(pgflow_engine, run_id)
            await anyio.sleep(0.05)
        set_visibility(pgflow_engine, run_id, "check", 0)
        async with running_worker(pgflow_engine, Gate):
            run = await wait_until_finished(pgflow_engine, run_id)
            # Only a failed run stops the Python worker from taking enrich's message.
            assert run == {"status": "failed", "output": None}

    assert [attempt["step"] for attempt in node_report["attempts"]] == ["enrich"]
    tasks = {task["step_slug"]: task for task in tasks_of(pgflow_engine, run_id)}
    assert (tasks["check"]["status"], tasks["check"]["attempts_count"]) == ("failed", 1)
    assert tasks["check"]["error_message"] == "NonRetryableError: order 9 cannot pass"
    assert "publish" not in tasks  # never started
    # The failed run cancelled enrich (extension/0060); Node reported it afterwards, which
    # changes nothing.
    assert (tasks["enrich"]["status"], tasks["enrich"]["output"]) == ("cancelled", None)
    [failure] = get_task_failures(pgflow_engine, run_id)
    assert (failure.step_slug, failure.attempt, failure.retryable) == ("check", 1, False)
    # Node's late report of enrich changed nothing: the run stays failed, nothing is queued.
    assert (await wait_until_finished(pgflow_engine, run_id))["status"] == "failed"
    with pgflow_engine.begin() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM pgmq.q_gate")).scalar() == 0
