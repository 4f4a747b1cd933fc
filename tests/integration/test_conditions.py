"""Conditional steps against real PostgreSQL, run by the worker (extension/0061).

Each branch of ``when_unmet`` and ``retries_exhausted``, a skipped dependency's key absent from
its dependents' input, a map step skipped, a root condition on the flow input, a run whose
leaves are all skipped, and resume of a run that had skipped steps.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import Flow, get_run_with_states, map_step, step
from pgflow.operations import resume_run
from tests.helpers.database import register_flows
from tests.helpers.workers import (
    EventLog,
    running_worker,
    start,
    tasks_of,
    wait_until_finished,
)

pytestmark = pytest.mark.anyio

SEEN: dict[str, list[Any]] = {}


def seen(step_slug: str, value: Any) -> None:
    SEEN.setdefault(step_slug, []).append(value)


class Route(Flow, slug="cond_route", max_attempts=1):
    @step
    def classify(self, input: dict[str, Any]) -> dict[str, str]:
        return {"kind": "big" if input["size"] > 10 else "small"}

    @step(depends_on=[classify], if_={"classify": {"kind": "big"}})
    def big(self, deps: dict[str, Any]) -> str:
        return "handled big"

    @step(depends_on=[classify], if_={"classify": {"kind": "small"}})
    def small(self, deps: dict[str, Any]) -> str:
        return "handled small"

    @step(depends_on=[big, small])
    def report(self, deps: dict[str, Any]) -> dict[str, Any]:
        seen("cond_route.report", deps)
        return deps


class Cascade(Flow, slug="cond_cascade", max_attempts=1):
    @step
    def check(self, input: dict[str, Any]) -> dict[str, bool]:
        return {"ok": input["ok"]}

    @step(depends_on=[check], if_={"check": {"ok": True}}, when_unmet="skip-cascade")
    def charge(self, deps: dict[str, Any]) -> str:
        return "charged"

    @step(depends_on=[charge])
    def receipt(self, deps: dict[str, Any]) -> str:
        return "receipt"

    @step(depends_on=[check])
    def audit(self, deps: dict[str, Any]) -> str:
        return "audited"


class Strict(Flow, slug="cond_strict", max_attempts=1):
    @step(if_not={"role": "guest"}, when_unmet="fail")
    def admin_only(self, input: dict[str, Any]) -> str:
        return "ok"

    @step
    def other(self, input: dict[str, Any]) -> str:
        return "other"


class Items(Flow, slug="cond_items", max_attempts=1):
    @step
    def fetch(self, input: dict[str, Any]) -> list[int]:
        return list(range(input["n"]))

    @map_step(array=fetch, if_={"fetch": [0]})  # runs when the list holds a 0 (is not empty)
    def double(self, item: int) -> int:
        return item * 2

    @step(depends_on=[double])
    def total(self, deps: dict[str, Any]) -> int:
        seen("cond_items.total", deps)
        return sum(deps.get("double", []))


class RootMap(Flow, slug="cond_root_map", max_attempts=1):
    @map_step(if_=[1])  # the flow input (an array) must contain 1
    def each(self, item: int) -> int:
        return item


class Exhausted(Flow, slug="cond_exhausted", max_attempts=2, base_delay=1):
    @step
    def start(self, input: dict[str, str]) -> dict[str, str]:
        return input

    @step(depends_on=[start], retries_exhausted="skip")
    def optional(self, deps: dict[str, Any]) -> str:
        seen("cond_exhausted.optional", deps)
        raise RuntimeError("enrichment service down")

    @step(depends_on=[start], retries_exhausted="skip-cascade")
    def flaky(self, deps: dict[str, Any]) -> str:
        raise RuntimeError("flaky down")

    @step(depends_on=[flaky])
    def after_flaky(self, deps: dict[str, Any]) -> str:
        return "never"

    @step(depends_on=[start, optional])
    def finish(self, deps: dict[str, Any]) -> dict[str, Any]:
        return deps


class ExhaustedFail(Flow, slug="cond_exhausted_fail", max_attempts=1):
    @step(retries_exhausted="fail")
    def only(self, input: Any) -> str:
        raise RuntimeError("no")


class MapExhausted(Flow, slug="cond_map_exhausted", max_attempts=1):
    @map_step(retries_exhausted="skip")
    def each(self, item: int) -> int:
        if item == 3:
            raise ValueError("three")
        return item

    @step(depends_on=[each])
    def after(self, deps: dict[str, Any]) -> dict[str, Any]:
        return deps


def steps_of(engine: Engine, run_id: uuid.UUID) -> dict[str, str]:
    with engine.begin() as connection:
        run = get_run_with_states(connection, run_id)
    assert run is not None
    return {s.step_slug: str(s.status) for s in run.steps}


def skips_of(engine: Engine, run_id: uuid.UUID) -> dict[str, str]:
    with engine.begin() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT step_slug, skip_reason FROM pgflow_python.step_skips WHERE run_id = :r"
            ),
            {"r": run_id},
        )
        return {row.step_slug: row.skip_reason for row in rows}


async def test_skip_leaves_the_key_out_of_dependents(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Route)
    SEEN.clear()
    async with running_worker(pgflow_engine, Route):
        big_run = await wait_until_finished(
            pgflow_engine, start(pgflow_engine, Route, {"size": 50})
        )
        small_id = start(pgflow_engine, Route, {"size": 1})
        small_run = await wait_until_finished(pgflow_engine, small_id)
    assert big_run["output"] == {"report": {"big": "handled big"}}
    assert small_run["output"] == {"report": {"small": "handled small"}}
    assert SEEN["cond_route.report"] == [{"big": "handled big"}, {"small": "handled small"}]
    assert steps_of(pgflow_engine, small_id) == {
        "classify": "completed",
        "big": "skipped",
        "small": "completed",
        "report": "completed",
    }
    assert skips_of(pgflow_engine, small_id) == {"big": "condition_unmet"}
    assert "big" not in {t["step_slug"] for t in tasks_of(pgflow_engine, small_id)}


async def test_skip_cascade_skips_everything_downstream(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Cascade)
    async with running_worker(pgflow_engine, Cascade):
        run_id = start(pgflow_engine, Cascade, {"ok": False})
        run = await wait_until_finished(pgflow_engine, run_id)
    assert run["status"] == "completed"
    assert run["output"] == {"audit": "audited"}  # the leaves that ran
    assert steps_of(pgflow_engine, run_id) == {
        "check": "completed",
        "charge": "skipped",
        "receipt": "skipped",
        "audit": "completed",
    }
    assert skips_of(pgflow_engine, run_id) == {
        "charge": "condition_unmet",
        "receipt": "dependency_skipped",
    }


async def test_fail_fails_the_run_naming_the_step_and_pattern(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Strict)
    run_id = start(pgflow_engine, Strict, {"role": "guest"})  # root condition: the flow input
    with pgflow_engine.begin() as connection:
        run = get_run_with_states(connection, run_id)
    assert run is not None
    assert run.run.status == "failed"
    (failed,) = [s for s in run.steps if s.step_slug == "admin_only"]
    assert failed.status == "failed"
    assert failed.error_message == (
        "condition not met: step 'admin_only' runs only when its input "
        'does not contain {"role": "guest"}'
    )
    assert run.tasks == ()  # failed inside start_flow: no step started, no message sent
    with pgflow_engine.begin() as connection:
        queued = connection.execute(sa.text("SELECT count(*) FROM pgmq.q_cond_strict")).scalar()
    assert queued == 0

    async with running_worker(pgflow_engine, Strict):
        admin = await wait_until_finished(
            pgflow_engine, start(pgflow_engine, Strict, {"role": "x"})
        )
    assert admin["output"] == {"admin_only": "ok", "other": "other"}


async def test_a_map_step_is_skipped_as_a_whole(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Items, RootMap)
    SEEN.clear()
    async with running_worker(pgflow_engine, Items, RootMap):
        empty_id = start(pgflow_engine, Items, {"n": 0})
        empty = await wait_until_finished(pgflow_engine, empty_id)
        some = await wait_until_finished(pgflow_engine, start(pgflow_engine, Items, {"n": 3}))
        root_skipped_id = start(pgflow_engine, RootMap, [2, 3])
        root_skipped = await wait_until_finished(pgflow_engine, root_skipped_id)
        root_ran = await wait_until_finished(pgflow_engine, start(pgflow_engine, RootMap, [1, 2]))
    # The total step still runs, without the skipped map's key.
    assert empty["output"] == {"total": 0}
    assert SEEN["cond_items.total"][0] == {}
    assert steps_of(pgflow_engine, empty_id)["double"] == "skipped"
    assert some["output"] == {"total": 6}
    # A run whose only (leaf) step is skipped completes; no leaf ran, so its output is null.
    assert root_skipped["status"] == "completed"
    assert root_skipped["output"] is None
    assert steps_of(pgflow_engine, root_skipped_id) == {"each": "skipped"}
    assert root_ran["output"] == {"each": [1, 2]}


async def test_retries_exhausted_skip_and_skip_cascade(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Exhausted)
    SEEN.clear()
    async with running_worker(pgflow_engine, Exhausted):
        run_id = start(pgflow_engine, Exhausted, {"id": "a1"})
        run = await wait_until_finished(pgflow_engine, run_id, timeout=30)
    assert run["status"] == "completed"
    assert run["output"] == {"finish": {"start": {"id": "a1"}}}
    assert len(SEEN["cond_exhausted.optional"]) == 2  # both attempts ran
    assert steps_of(pgflow_engine, run_id) == {
        "start": "completed",
        "optional": "skipped",
        "flaky": "skipped",
        "after_flaky": "skipped",
        "finish": "completed",
    }
    assert skips_of(pgflow_engine, run_id) == {
        "optional": "handler_failed",
        "flaky": "handler_failed",
        "after_flaky": "dependency_skipped",
    }
    tasks = {t["step_slug"]: t for t in tasks_of(pgflow_engine, run_id)}
    assert tasks["optional"]["status"] == "skipped"
    assert tasks["optional"]["attempts_count"] == 2
    assert "enrichment service down" in tasks["optional"]["error_message"]
    with pgflow_engine.begin() as connection:
        error = connection.execute(
            sa.text(
                "SELECT error_message FROM pgflow.step_states"
                " WHERE run_id = :r AND step_slug = 'optional'"
            ),
            {"r": run_id},
        ).scalar_one()
        queued = connection.execute(sa.text("SELECT count(*) FROM pgmq.q_cond_exhausted")).scalar()
    assert "enrichment service down" in error
    assert queued == 0


async def test_retries_exhausted_fail_is_todays_behaviour(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, ExhaustedFail)
    async with running_worker(pgflow_engine, ExhaustedFail):
        run_id = start(pgflow_engine, ExhaustedFail, {})
        run = await wait_until_finished(pgflow_engine, run_id)
    assert run["status"] == "failed"
    assert steps_of(pgflow_engine, run_id) == {"only": "failed"}


async def test_a_map_element_exhausted_skips_the_step_and_its_siblings(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, MapExhausted)
    async with running_worker(pgflow_engine, MapExhausted, concurrency=1, batch_size=1):
        run_id = start(pgflow_engine, MapExhausted, [3, 1, 2, 4, 5])
        run = await wait_until_finished(pgflow_engine, run_id)
    assert run["status"] == "completed"
    assert run["output"] == {"after": {}}
    statuses = {t["task_index"]: t["status"] for t in tasks_of(pgflow_engine, run_id)}
    assert statuses[0] == "skipped"
    assert set(statuses.values()) <= {"skipped", "completed"}
    assert steps_of(pgflow_engine, run_id)["each"] == "skipped"


async def test_resume_of_a_run_with_skipped_steps(pgflow_engine: Engine) -> None:
    register_flows(pgflow_engine, Route)
    broken: list[bool] = [True]

    class Failing(Route, slug="cond_route_resume", max_attempts=1):
        @step(depends_on=["big", "small"])
        def report(self, deps: dict[str, Any]) -> dict[str, Any]:
            if broken[0]:
                raise RuntimeError("report service down")
            return deps

    register_flows(pgflow_engine, Failing)
    async with running_worker(pgflow_engine, Failing):
        run_id = start(pgflow_engine, Failing, {"size": 1})
        assert (await wait_until_finished(pgflow_engine, run_id))["status"] == "failed"
        broken[0] = False
        assert resume_run(pgflow_engine, run_id).tasks_requeued == 1
        run = await wait_until_finished(pgflow_engine, run_id)
    assert run["status"] == "completed"
    assert run["output"] == {"report": {"small": "handled small"}}
    assert steps_of(pgflow_engine, run_id)["big"] == "skipped"


class LastResort(Flow, slug="cond_last_resort", max_attempts=1):
    @step(retries_exhausted="skip")
    def only(self, input: Any) -> str:
        raise RuntimeError("gave up")


async def test_a_skip_on_exhaustion_is_announced_and_completes_the_run(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, LastResort)
    events = EventLog()
    try:
        async with running_worker(pgflow_engine, LastResort):
            run_id = start(pgflow_engine, LastResort, {})
            run = await wait_until_finished(pgflow_engine, run_id)
    finally:
        events.close()
    assert run == {"status": "completed", "output": None}
    [(failed, _)] = events.named("task.failed")
    assert failed["step_skipped"] is True
    assert failed["retry_at"] is None
    [(completed, _)] = events.named("run.completed")
    assert completed["run_id"] == str(run_id)
    assert completed["duration_ms"] is not None
    assert not events.named("run.failed")


class Guarded(Flow, slug="cond_guarded", max_attempts=1):
    @step
    def classify(self, input: dict[str, bool]) -> dict[str, bool]:
        return input

    @step(depends_on=[classify], if_={"classify": {"ok": True}}, when_unmet="fail")
    def guard(self, deps: dict[str, Any]) -> str:
        return "passed"

    @step(depends_on=[classify])
    def sibling(self, deps: dict[str, Any]) -> str:
        return "sibling"


async def test_a_condition_failing_the_run_mid_batch_starts_nothing_more(
    pgflow_engine: Engine,
) -> None:
    register_flows(pgflow_engine, Guarded)
    async with running_worker(pgflow_engine, Guarded):
        run_id = start(pgflow_engine, Guarded, {"ok": False})
        run = await wait_until_finished(pgflow_engine, run_id)
    assert run["status"] == "failed"
    assert steps_of(pgflow_engine, run_id) == {
        "classify": "completed",
        "guard": "failed",
        "sibling": "created",
    }
    assert {t["step_slug"]: t["status"] for t in tasks_of(pgflow_engine, run_id)} == {
        "classify": "completed"
    }
    with pgflow_engine.begin() as connection:
        queued = connection.execute(sa.text("SELECT count(*) FROM pgmq.q_cond_guarded")).scalar()
    assert queued == 0
