"""Failed attempts through the real worker: tracebacks recorded and shown, non-retryable errors,
and the events that say whether a retry follows and that the run failed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime

import anyio.to_thread
import pytest
from sqlalchemy.engine import Engine

from pgflow import Flow, NonRetryableError, start_flow_and_wait, step
from pgflow.cli._render import run_details
from pgflow.client import get_run_with_states
from pgflow.errors import RunFailedError
from pgflow.operations import describe_run
from tests.helpers.database import register_flows
from tests.helpers.workers import EventLog, running_worker

pytestmark = pytest.mark.anyio


def check_order(order: dict[str, int]) -> None:
    if order["total"] < 0:
        raise ValueError(f"negative total {order['total']}")


def first_frame(traceback: str) -> tuple[str, str]:
    """The file and function of the first frame of a formatted traceback."""
    lines = traceback.splitlines()
    assert lines[0] == "Traceback (most recent call last):", traceback
    found = re.fullmatch(r'  File "(.+)", line \d+, in (\w+)', lines[1])
    assert found, traceback
    return found[1], found[2]


class Flaky(Flow, slug="flaky_orders", max_attempts=2, base_delay=1):
    @step
    def validate(self, order: dict[str, int]) -> None:
        check_order(order)  # a frame below the handler, to find in the traceback


class Strict(Flow, slug="strict_orders", max_attempts=5, base_delay=1):
    @step
    async def validate(self, order: dict[str, int]) -> None:
        raise NonRetryableError(f"order {order['id']} cannot be shipped")

    @step
    async def ship(self, order: dict[str, int]) -> str:
        return "shipped"


@pytest.fixture
def events() -> Iterator[EventLog]:
    log = EventLog()
    yield log
    log.close()


async def start_and_fail(engine: Engine, flow: type[Flow], order: dict[str, int]) -> RunFailedError:
    def run() -> None:
        start_flow_and_wait(engine, flow, order, timeout=30)

    with pytest.raises(RunFailedError) as raised:
        await anyio.to_thread.run_sync(run)
    return raised.value


async def test_each_failed_attempt_keeps_its_traceback_and_the_error_shows_it(
    pgflow_engine: Engine, events: EventLog
) -> None:
    register_flows(pgflow_engine, Flaky)
    async with running_worker(pgflow_engine, Flaky):
        error = await start_and_fail(pgflow_engine, Flaky, {"total": -3})

    assert error.failure is not None
    assert (error.failure.attempt, error.failure.error_type) == (2, "ValueError")
    assert error.traceback is not None
    assert 'in check_order\n    raise ValueError(f"negative total' in error.traceback
    assert error.traceback.endswith("ValueError: negative total -3\n")
    # It starts at the handler's frame (a sync handler: no worker, thread or anyio frames).
    assert first_frame(error.traceback) == (__file__, "validate")
    assert "The handler's traceback:\nTraceback (most recent call last):" in str(error)
    snapshot = get_run_with_states(pgflow_engine, error.run_id)
    assert snapshot is not None
    assert [(f.attempt, f.retryable, f.retry_at is not None) for f in snapshot.failures] == [
        (1, True, True),
        (2, True, False),
    ]
    assert all(f.traceback and "in check_order" in f.traceback for f in snapshot.failures)

    failed = [fields for fields, _ in events.named("task.failed")]
    assert [(f["attempt"], f["error_type"], f["retryable"]) for f in failed] == [
        (1, "ValueError", True),
        (2, "ValueError", True),
    ]
    retry_at = failed[0]["retry_at"]
    assert isinstance(retry_at, str)
    assert datetime.fromisoformat(retry_at) == snapshot.failures[0].retry_at
    assert failed[1]["retry_at"] is None
    assert "in check_order" in failed[0]["exception"]
    [(run_failed, _)] = events.named("run.failed")
    assert run_failed["run_id"] == str(error.run_id)
    assert (run_failed["flow"], run_failed["step"]) == ("flaky_orders", "validate")
    assert run_failed["error"] == "ValueError: negative total -3"
    assert run_failed["duration_ms"] > 0


async def test_a_non_retryable_error_ends_the_run_after_one_attempt(
    pgflow_engine: Engine, events: EventLog
) -> None:
    register_flows(pgflow_engine, Strict)
    async with running_worker(pgflow_engine, Strict):
        error = await start_and_fail(pgflow_engine, Strict, {"id": 7})

    assert error.attempts == 1
    details = describe_run(pgflow_engine, error.run_id)
    assert details is not None
    shown = run_details(details)  # what `pgflow runs show` prints
    assert "step 'validate' failed (task 0, attempt 1, not retryable): NonRetryableError" in shown
    assert "  pgflow.errors.NonRetryableError: order 7 cannot be shipped" in shown
    assert error.failure is not None
    assert (error.failure.retryable, error.failure.retry_at) == (False, None)
    assert error.traceback is not None
    assert first_frame(error.traceback) == (__file__, "validate")  # an async handler
    assert "failed after 1 attempt: NonRetryableError: order 7 cannot be shipped" in str(error)
    assert "(not retryable)" in str(error)
    snapshot = get_run_with_states(pgflow_engine, error.run_id)
    assert snapshot is not None
    [task] = snapshot.tasks_of("validate")
    assert (task.status, task.attempts_count) == ("failed", 1)
    [failed] = [fields for fields, _ in events.named("task.failed")]
    assert (failed["retryable"], failed["retry_at"]) == (False, None)
    assert len(events.named("run.failed")) == 1
