"""The public testing helpers: call one step directly, or run a whole flow in-process."""

from __future__ import annotations

import time
import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from myapp.flows import AnalyzeWebsite, Thumbnails
from pgflow import Context, Flow, step, telemetry
from pgflow.cron import Cron
from pgflow.errors import RunFailedError
from pgflow.schedules import create_schedule
from pgflow.testing import call_step, run_flow_inline
from tests.helpers.database import register_flows


def test_call_step_runs_sync_and_async_handlers_without_a_database() -> None:
    website = call_step(AnalyzeWebsite, "website", {"url": "good.example"})
    assert website == {"url": "good.example", "text": "Contents of good.example"}
    assert call_step(AnalyzeWebsite, "sentiment", {"website": website}) == 0.8
    assert call_step(Thumbnails, "resize", "a.png", task_index=3) == "a.png@200px"


def test_call_step_passes_the_context_it_is_given() -> None:
    class Echo(Flow, slug="echo"):
        @step
        async def show(self, input: int, ctx: Context) -> list[object]:
            return [input, ctx.attempt, ctx.task_index, await ctx.flow_input(), str(ctx.run_id)]

    run_id = uuid.uuid4()
    assert call_step(Echo, "show", 1, attempt=2, flow_input={"x": 1}, run_id=run_id) == [
        1,
        2,
        0,
        {"x": 1},
        str(run_id),
    ]


def test_run_flow_inline_completes_a_real_run(pgflow_engine: Engine) -> None:
    run = run_flow_inline(Thumbnails, ["a.png", "b.png"], pgflow_engine)
    assert run.output == {"publish": 2}
    assert str(run.status) == "completed"


def test_run_flow_inline_raises_on_failure(pgflow_engine: Engine) -> None:
    class Broken(Flow, slug="broken_inline", max_attempts=1):
        @step
        def boom(self, input: object) -> None:
            raise RuntimeError("nope")

    with pytest.raises(RunFailedError, match="nope"):
        run_flow_inline(Broken, {}, pgflow_engine)


def test_runs_emit_started_and_completed_or_failed_events(pgflow_engine: Engine) -> None:
    seen: list[tuple[str, dict[str, object]]] = []
    unsubscribe = telemetry.subscribe(lambda event, fields: seen.append((event, fields)))
    try:
        run = run_flow_inline(Thumbnails, ["a"], pgflow_engine)
        with pytest.raises(RunFailedError):
            run_flow_inline(_AlwaysFails, {}, pgflow_engine)
    finally:
        unsubscribe()
    # run.started comes from the client, the run's end from the worker (another thread).
    runs = sorted((fields["flow"], event) for event, fields in seen if event.startswith("run."))
    assert runs == [
        ("always_fails", "run.failed"),
        ("always_fails", "run.started"),
        ("thumbnails", "run.completed"),
        ("thumbnails", "run.started"),
    ]
    completed = next(f for e, f in seen if e == "run.completed")
    assert completed["run_id"] == str(run.run_id)
    failed = next(f for e, f in seen if e == "run.failed")
    assert failed["step"] == "boom"
    assert failed["error"] == "RuntimeError: always"


class _AlwaysFails(Flow, slug="always_fails", max_attempts=1):
    @step
    def boom(self, input: object) -> None:
        raise RuntimeError("always")


class _Slow(Flow, slug="slow_inline"):
    @step
    def wait(self, input: object) -> str:
        time.sleep(2.5)  # long enough for an every-second schedule to be due twice
        return "done"


def _fired(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.execute(
                sa.text("SELECT count(*) FROM pgflow.runs WHERE flow_slug = 'heartbeat'")
            ).scalar_one()
        )


def test_run_flow_inline_fires_no_schedule_unless_asked(pgflow_engine: Engine) -> None:
    class Heartbeat(Flow, slug="heartbeat"):
        @step
        def beat(self, input: object) -> None:
            return None

    register_flows(pgflow_engine, Heartbeat)
    create_schedule(pgflow_engine, Heartbeat, Cron("* * * * * *", name="every_second"))

    run_flow_inline(_Slow, {}, pgflow_engine)
    assert _fired(pgflow_engine) == 0

    run_flow_inline(_Slow, {}, pgflow_engine, fire_schedules=True)
    assert _fired(pgflow_engine) >= 1
