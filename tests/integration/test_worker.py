"""The worker against real PostgreSQL: handler contract, retries, timeouts, limits, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.to_thread
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from myapp.flows import AnalyzeWebsite, SendEmail, Thumbnails
from pgflow import Context, Flow, _sql, map_step, step
from pgflow.errors import FlowNotReadyError
from pgflow.worker import Worker
from tests.helpers.database import register_flows
from tests.helpers.workers import (
    EventLog,
    running_worker,
    seconds_between,
    start,
    tasks_of,
    wait_until_finished,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def events() -> Iterator[EventLog]:
    log = EventLog()
    yield log
    log.close()


async def test_inputs_fan_in_map_and_jobs(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, AnalyzeWebsite, Thumbnails, SendEmail)
    async with running_worker(pgflow_engine, AnalyzeWebsite, Thumbnails, SendEmail):
        analyze = start(pgflow_engine, AnalyzeWebsite, {"url": "good.example"})
        thumbs = start(pgflow_engine, Thumbnails, ["a.png", "b.png", "c.png"])
        empty = start(pgflow_engine, Thumbnails, [])
        email = start(pgflow_engine, SendEmail, {"to": "ada@example.org"})
        assert await wait_until_finished(pgflow_engine, analyze) == {
            "status": "completed",
            "output": {"save": {"score": 0.8, "summary": "Contents of good.example"}},
        }
        assert (await wait_until_finished(pgflow_engine, thumbs))["output"] == {"publish": 3}
        assert (await wait_until_finished(pgflow_engine, empty))["output"] == {"publish": 0}
        assert (await wait_until_finished(pgflow_engine, email))["output"] == {
            "perform": {"sent_to": "ada@example.org"}
        }
    uploads = [t["output"] for t in tasks_of(pgflow_engine, thumbs) if t["step_slug"] == "upload"]
    assert uploads == [f"https://cdn.example/{n}@200px" for n in ("a.png", "b.png", "c.png")]


class Falsy(Flow, slug="falsy_outputs"):
    @step
    def zero(self, input: Any) -> int:
        return 0

    @step
    def no(self, input: Any) -> bool:
        return False

    @step
    def blank(self, input: Any) -> str:
        return ""

    @step
    def nothing(self, input: Any) -> None:
        return None


async def test_outputs_are_stored_exactly(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Falsy)
    async with running_worker(pgflow_engine, Falsy):
        run = await wait_until_finished(pgflow_engine, start(pgflow_engine, Falsy, {}))
    assert run["output"] == {"zero": 0, "no": False, "blank": "", "nothing": None}


class Seen(Flow, slug="context_seen"):
    @step
    def root(self, input: Any, ctx: Context) -> dict[str, Any]:
        return {"input": input, "attempt": ctx.attempt, "step": ctx.step_slug}

    @step(depends_on=[root])
    def root_list(self, deps: Any) -> list[int]:
        return [10, 20]

    @map_step(array=root_list)
    def each(self, item: int, ctx: Context) -> list[Any]:
        return [item, ctx.task_index, ctx.flow_input_sync()]

    @step(depends_on=[each])
    async def last(self, deps: dict[str, Any], ctx: Context) -> Any:
        return {"deps": deps, "flow_input": await ctx.flow_input(), "run": str(ctx.run_id)}


async def test_context_and_lazy_flow_input(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Seen)
    async with running_worker(pgflow_engine, Seen):
        run_id = start(pgflow_engine, Seen, {"k": "v"})
        run = await wait_until_finished(pgflow_engine, run_id)
    assert run["status"] == "completed"
    assert run["output"] == {
        "last": {
            "deps": {"each": [[10, 0, {"k": "v"}], [20, 1, {"k": "v"}]]},
            "flow_input": {"k": "v"},
            "run": str(run_id),
        }
    }


class Flaky(Flow, slug="flaky", base_delay=1, max_attempts=3):
    calls: dict[str, int] = {}  # noqa: RUF012 - shared on purpose, reset by the test

    @step
    def fragile(self, input: Any, ctx: Context) -> int:
        if ctx.attempt < 3:
            raise ConnectionError(f"attempt {ctx.attempt} lost")
        return ctx.attempt


async def test_retries_back_off_exponentially_then_succeed(
    pgflow_engine: Engine, events: EventLog
) -> None:
    register_flows(pgflow_engine, Flaky)
    # A 10 s poll interval: only the wake-up at the retry's visibility explains prompt retries.
    async with running_worker(pgflow_engine, Flaky, poll_interval=10.0):
        run_id = start(pgflow_engine, Flaky, {})
        run = await wait_until_finished(pgflow_engine, run_id, timeout=30)
    assert run == {"status": "completed", "output": {"fragile": 3}}
    [task] = tasks_of(pgflow_engine, run_id)
    assert task["attempts_count"] == 3
    starts = [at for fields, at in events.named("task.started") if fields["flow"] == "flaky"]
    gaps = seconds_between(starts)
    # upstream: delay = base_delay * 2^attempts_count -> 2 s after the 1st try, 4 s after the 2nd
    assert len(gaps) == 2
    # Upper bounds leave room for a loaded CI machine and stay far below the 10 s poll interval.
    assert 2.0 <= gaps[0] < 5.0, gaps
    assert 4.0 <= gaps[1] < 7.0, gaps
    failures = [f["error"] for f, _ in events.named("task.failed")]
    assert failures == ["ConnectionError: attempt 1 lost", "ConnectionError: attempt 2 lost"]


class Doomed(Flow, slug="doomed", max_attempts=2, base_delay=1):
    @step
    def fails(self, input: Any) -> None:
        raise ValueError("bad input")

    @step
    async def slow(self, input: Any) -> str:
        await anyio.sleep(30)
        return "never"

    @step(depends_on=[slow])
    def after(self, deps: Any) -> None:
        return None


async def test_exhausted_attempts_fail_the_run_and_stop_its_other_tasks(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Doomed)
    async with running_worker(pgflow_engine, Doomed, shutdown_timeout=0.5):
        run_id = start(pgflow_engine, Doomed, {})
        run = await wait_until_finished(pgflow_engine, run_id)
    assert run["status"] == "failed"
    tasks = {t["step_slug"]: t for t in tasks_of(pgflow_engine, run_id)}
    assert tasks["fails"]["status"] == "failed"
    assert tasks["fails"]["attempts_count"] == 2
    assert tasks["fails"]["error_message"] == "ValueError: bad input"
    assert "after" not in tasks  # never started: its dependency never completed


class Delayed(Flow, slug="delayed"):
    @step(start_delay=2)
    def later(self, input: Any) -> float:
        return time.time()


async def test_start_delay_is_honoured_and_picked_up_promptly(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Delayed)
    async with running_worker(pgflow_engine, Delayed, poll_interval=10.0):
        started = time.time()
        run = await wait_until_finished(pgflow_engine, start(pgflow_engine, Delayed, {}))
    waited = run["output"]["later"] - started
    assert 2.0 <= waited < 5.0, waited  # woken at visibility, not by the 10 s poll interval


# One flow per failing step: a run ends at its first failure and cancels its other tasks
# (extension/0060), so each failure is observed in a run of its own.
class SlowAsync(Flow, slug="slow_async", timeout=3, max_attempts=1):
    @step
    async def async_sleeper(self, input: Any) -> str:
        await anyio.sleep(30)
        return "late"


class SlowSync(Flow, slug="slow_sync", timeout=3, max_attempts=1):
    @step
    def sync_sleeper(self, input: Any) -> str:
        time.sleep(4)
        return "late"


async def test_timeouts_fail_async_and_sync_handlers(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, SlowAsync, SlowSync)
    async with running_worker(pgflow_engine, SlowAsync, SlowSync):
        run_ids = [start(pgflow_engine, flow, {}) for flow in (SlowAsync, SlowSync)]
        runs = [await wait_until_finished(pgflow_engine, run_id) for run_id in run_ids]
        await anyio.sleep(1.5)  # the abandoned sync handler finishes; its result must be ignored
    assert [run["status"] for run in runs] == ["failed", "failed"]
    errors = {
        t["step_slug"]: t["error_message"]
        for run_id in run_ids
        for t in tasks_of(pgflow_engine, run_id)
    }
    assert (
        errors["async_sleeper"] == "TimeoutError: step 'async_sleeper' exceeded its timeout of 3s"
    )
    assert errors["sync_sleeper"] == "TimeoutError: step 'sync_sleeper' exceeded its timeout of 3s"


class NotJson(Flow, slug="bad_not_json", max_attempts=1):
    @step
    def not_json(self, input: Any) -> object:
        return {"when": object()}


class Nan(Flow, slug="bad_nan", max_attempts=1):
    @step
    def nan(self, input: Any) -> float:
        return float("nan")


class Base(Flow, slug="bad_base_exception", max_attempts=1):
    @step
    def base_exception(self, input: Any) -> None:
        class Abort(BaseException):
            pass

        raise Abort("handler gave up")


async def test_bad_outputs_and_base_exceptions_fail_only_the_task(pgflow_engine: Engine) -> None:
    flows = (NotJson, Nan, Base)
    register_flows(pgflow_engine, *flows)
    async with running_worker(pgflow_engine, *flows):
        run_ids = [start(pgflow_engine, flow, {}) for flow in flows]
        for run_id in run_ids:
            assert (await wait_until_finished(pgflow_engine, run_id))["status"] == "failed"
    errors = {
        t["step_slug"]: t["error_message"]
        for run_id in run_ids
        for t in tasks_of(pgflow_engine, run_id)
    }
    assert errors["not_json"].startswith(
        "TypeError: step 'not_json' returned a value that is not JSON"
    )
    assert (
        errors["nan"] == "TypeError: step 'nan' returned a value that is not JSON: NaN or Infinity"
    )
    assert errors["base_exception"] == "Abort: handler gave up"


class Busy(Flow, slug="busy"):
    active = 0
    peak = 0
    lock = threading.Lock()

    @map_step
    def work(self, item: int) -> int:
        with Busy.lock:
            Busy.active += 1
            Busy.peak = max(Busy.peak, Busy.active)
        time.sleep(0.05)
        with Busy.lock:
            Busy.active -= 1
        return item


async def test_concurrency_is_never_exceeded(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Busy)
    Busy.peak = 0
    async with running_worker(pgflow_engine, Busy, concurrency=3, batch_size=5):
        run = await wait_until_finished(pgflow_engine, start(pgflow_engine, Busy, list(range(30))))
    assert run["status"] == "completed"
    assert Busy.peak == 3


class LongRunner(Flow, slug="long_runner", timeout=20, max_attempts=1):
    @step
    async def long(self, input: Any) -> str:
        await anyio.sleep(3.2)
        return "done"


async def test_handler_longer_than_read_visibility_is_not_run_twice(
    pgflow_engine: Engine, events: EventLog
) -> None:
    register_flows(pgflow_engine, LongRunner)
    async with running_worker(pgflow_engine, LongRunner, visibility_timeout=1, poll_interval=0.2):
        run_id = start(pgflow_engine, LongRunner, {})
        run = await wait_until_finished(pgflow_engine, run_id)
    assert run == {"status": "completed", "output": {"long": "done"}}
    assert len(events.named("task.started")) == 1
    assert tasks_of(pgflow_engine, run_id)[0]["attempts_count"] == 1


class Graceful(Flow, slug="graceful"):
    @step
    async def takes_a_second(self, input: Any) -> str:
        await anyio.sleep(1.0)
        return "finished"


async def test_stop_lets_in_flight_work_finish(pgflow_engine: Engine, events: EventLog) -> None:
    register_flows(pgflow_engine, Graceful)
    async with running_worker(pgflow_engine, Graceful) as worker:
        run_id = start(pgflow_engine, Graceful, {})
        while not events.named("task.started"):
            await anyio.sleep(0.02)
        worker.stop()
    run = await wait_until_finished(pgflow_engine, run_id, timeout=1)
    assert run == {"status": "completed", "output": {"takes_a_second": "finished"}}
    assert [name for name, _, _ in events.events if name.startswith("worker.")][-1] == (
        "worker.stopped"
    )


async def test_async_handlers_share_the_loop(pgflow_engine: Engine) -> None:
    loop_ids: set[int] = set()

    class OnLoop(Flow, slug="on_loop"):
        @map_step
        async def each(self, item: int) -> int:
            loop_ids.add(id(asyncio.get_running_loop()))
            await anyio.sleep(0.01)
            return item * 2

    register_flows(pgflow_engine, OnLoop)
    async with running_worker(pgflow_engine, OnLoop):
        run = await wait_until_finished(pgflow_engine, start(pgflow_engine, OnLoop, [1, 2, 3]))
    assert run["output"] == {"each": [2, 4, 6]}
    assert loop_ids == {id(asyncio.get_running_loop())}


class Survivor(Flow, slug="survivor", max_attempts=1):
    @step
    async def slow(self, input: Any) -> str:
        await anyio.sleep(1.0)
        return "reported after reconnecting"


def _terminate_worker_backends(engine: Engine) -> int:
    with engine.begin() as connection:
        return int(
            connection.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database()"
                    " AND application_name LIKE 'pgflow-worker:%'"
                )
            ).scalar_one()
        )


async def test_worker_survives_terminated_connections(
    pgflow_engine: Engine, events: EventLog
) -> None:
    register_flows(pgflow_engine, Survivor)
    async with running_worker(pgflow_engine, Survivor, poll_interval=0.2):
        first = start(pgflow_engine, Survivor, {})
        while not events.named("task.started"):
            await anyio.sleep(0.02)
        assert await anyio.to_thread.run_sync(_terminate_worker_backends, pgflow_engine) >= 2
        assert (await wait_until_finished(pgflow_engine, first))["status"] == "completed"
        second = start(pgflow_engine, Survivor, {})  # claiming works again after reconnecting
        assert (await wait_until_finished(pgflow_engine, second))["status"] == "completed"


def test_a_report_from_a_worker_that_lost_the_task_is_ignored(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Graceful)
    run_id = start(pgflow_engine, Graceful, {})
    holder, stranger = uuid.uuid4(), uuid.uuid4()
    with pgflow_engine.begin() as connection:
        for worker_id in (holder, stranger):
            connection.execute(
                _sql.query("register_worker"),
                {"worker_id": worker_id, "queue_name": "graceful", "function_name": "test"},
            )
        claimed = connection.execute(
            _sql.query("claim_task_batch"),
            {"flow_slug": "graceful", "vt": 5, "qty": 1, "worker_id": holder, "margin": 5},
        ).all()
    assert len(claimed) == 1
    report = {"run_ids": [run_id], "step_slugs": ["takes_a_second"], "task_indexes": [0]}
    with pgflow_engine.begin() as connection:
        ignored = connection.execute(
            _sql.query("complete_task_batch"),
            {**report, "worker_id": stranger, "outputs": ['"from the stranger"']},
        ).all()
        accepted = connection.execute(
            _sql.query("complete_task_batch"),
            {**report, "worker_id": holder, "outputs": ['"mine"']},
        ).all()
    assert ignored == []
    assert [row.recorded for row in accepted if row.recorded is not None] == [1]
    # The report also says which run it ended, for run events without another query.
    assert [(row.ended_run_id, row.ended_status) for row in accepted if row.recorded is None] == [
        (run_id, "completed")
    ]
    assert tasks_of(pgflow_engine, run_id)[0]["output"] == "mine"


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_the_worker_serves_on_trio(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Thumbnails, SendEmail)
    async with running_worker(pgflow_engine, Thumbnails, SendEmail):
        thumbs = start(pgflow_engine, Thumbnails, ["x.png"])
        email = start(pgflow_engine, SendEmail, {"to": "trio@example.org"})
        assert (await wait_until_finished(pgflow_engine, thumbs))["output"] == {"publish": 1}
        assert (await wait_until_finished(pgflow_engine, email))["status"] == "completed"


class FeedsMap(Flow, slug="feeds_map", max_attempts=1):
    @step
    def listing(self, input: Any) -> dict[str, int]:
        return {"not": 1}

    @map_step(array=listing)
    def each(self, item: Any) -> Any:
        return item


async def test_a_non_array_feeding_a_map_step_fails_with_a_clear_message(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, FeedsMap)
    async with running_worker(pgflow_engine, FeedsMap):
        run_id = start(pgflow_engine, FeedsMap, {})
        assert (await wait_until_finished(pgflow_engine, run_id))["status"] == "failed"
    [task] = tasks_of(pgflow_engine, run_id)
    assert task["error_message"] == (
        "TypeError: step 'listing' feeds map step(s) ['each'] and must return a JSON array,"
        ' got {"not": 1}'
    )


async def test_a_flow_with_another_shape_in_the_database_is_refused(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Graceful)

    class Graceful2(Flow, slug="graceful"):  # same slug, different steps
        @step
        def other(self, input: Any) -> None:
            return None

    worker = Worker([Graceful2], pgflow_engine)
    with pytest.raises(FlowNotReadyError, match="'graceful' in the database has another shape"):
        await worker.serve()


class UsesDatabase(Flow, slug="uses_database"):
    @step
    def count_flows(self, input: Any, ctx: Context) -> int:
        assert ctx.engine is not None
        with ctx.engine.begin() as connection:
            return int(
                connection.execute(sa.text("SELECT count(*) FROM pgflow.flows")).scalar_one()
            )


async def test_handlers_reach_the_database_through_the_context(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, UsesDatabase)
    async with running_worker(pgflow_engine, UsesDatabase):
        run = await wait_until_finished(pgflow_engine, start(pgflow_engine, UsesDatabase, {}))
    assert run["output"] == {"count_flows": 1}
