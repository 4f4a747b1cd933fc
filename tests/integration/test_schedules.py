"""Schedules on real PostgreSQL: the API, each tick fired once, missed-tick policies, pausing."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

from pgflow import Flow, Job, map_step, start_flow, step
from pgflow.errors import (
    FlowNotRegisteredError,
    InvalidScheduleError,
    MapInputNotArrayError,
    ScheduleError,
    ScheduleNotFoundError,
)
from pgflow.operations import list_runs
from pgflow.schedules import (
    Cron,
    create_schedule,
    create_schedule_async,
    delete_schedule,
    fire_due,
    get_schedule,
    get_schedule_async,
    list_schedules,
    list_schedules_async,
    pause_schedule,
    pause_schedule_async,
    resume_schedule,
    sync_schedules,
    sync_schedules_async,
    trigger_schedule,
    trigger_schedule_async,
    update_schedule,
)
from pgflow.worker._postgres import PostgresStore
from tests.helpers.database import libpq_url
from tests.helpers.database import register_flows as register
from tests.helpers.workers import running_worker, wait_until_finished

DAY = timedelta(days=1)
T0 = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)


class Cleanup(Job, slug="cleanup", schedule=Cron("0 3 * * *", input={"deep": False})):
    def perform(self, input: dict[str, Any]) -> int:
        return 0


class Digest(
    Flow,
    slug="digest",
    schedule=[
        Cron("0 8 * * *", name="digest_morning", timezone="Europe/Paris"),
        Cron("0 18 * * *", name="digest_evening", timezone="Europe/Paris"),
    ],
):
    @step
    def collect(self, input: Any) -> int:
        return 1


@pytest.fixture
def engine(pgflow_engine: Engine) -> Engine:
    register(pgflow_engine, Cleanup, Digest)
    return pgflow_engine


def runs(engine: Engine, flow_slug: str) -> list[dict[str, Any]]:
    with engine.begin() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT r.run_id, r.input, f.fire_time, f.manual, f.schedule_name"
                " FROM pgflow.runs AS r"
                " LEFT JOIN pgflow_python.schedule_fires AS f USING (run_id)"
                " WHERE r.flow_slug = :slug ORDER BY f.fire_time"
            ),
            {"slug": flow_slug},
        ).mappings()
        return [dict(row) for row in rows]


def set_next_fire(engine: Engine, name: str, at: datetime) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE pgflow_python.schedules SET next_fire_at = :at WHERE schedule_name = :n"
            ),
            {"at": at, "n": name},
        )


def fire(engine: Engine, now: datetime) -> list[tuple[str, datetime, uuid.UUID]]:
    with engine.begin() as connection:
        return [
            (name, tick, run_id) for name, _, tick, run_id in fire_due(connection, now=now).fired
        ]


def test_create_list_update_pause_resume_delete(engine: Engine) -> None:
    created = create_schedule(engine, Cleanup, Cron("*/5 * * * *", name="cleanup_often"))
    assert (created.name, created.flow_slug, created.declared) == (
        "cleanup_often",
        "cleanup",
        False,
    )
    assert created.next_fire_at is not None
    assert created.next_fire_at.minute % 5 == 0
    assert [s.name for s in list_schedules(engine)] == ["cleanup_often"]
    assert list_schedules(engine, Digest) == []

    updated = update_schedule(engine, "cleanup_often", expression="0 * * * *", input={"deep": True})
    assert (updated.cron.expression, updated.cron.input) == ("0 * * * *", {"deep": True})
    assert updated.next_fire_at is not None
    assert updated.next_fire_at.minute == 0

    assert pause_schedule(engine, "cleanup_often").paused
    resumed = resume_schedule(engine, "cleanup_often")
    assert not resumed.paused
    assert resumed.next_fire_at is not None

    delete_schedule(engine, "cleanup_often")
    assert list_schedules(engine) == []
    with pytest.raises(ScheduleNotFoundError, match="no schedule is named 'cleanup_often'"):
        get_schedule(engine, "cleanup_often")


def test_api_refusals_say_what_is_wrong(engine: Engine) -> None:
    with pytest.raises(FlowNotRegisteredError):
        create_schedule(engine, "no_such_flow", Cron("* * * * *"))
    with pytest.raises(FlowNotRegisteredError, match=r"'cleanpu' .* \(did you mean 'cleanup'\?\)"):
        create_schedule(engine, "cleanpu", Cron("* * * * *"))
    create_schedule(engine, Cleanup, Cron("* * * * *"))
    with pytest.raises(ScheduleError, match="exists already"):
        create_schedule(engine, Cleanup, Cron("0 * * * *"))
    with pytest.raises(InvalidScheduleError, match="unknown time zone"):
        update_schedule(engine, "cleanup", timezone="Nowhere/Land")
    with pytest.raises(ScheduleNotFoundError):
        pause_schedule(engine, "missing")


def test_a_flow_mapping_over_its_input_needs_a_list_input(engine: Engine) -> None:
    class Fan(Flow, slug="fan_out"):
        @map_step
        def each(self, item: int) -> int:
            return item

    register(engine, Fan)
    with pytest.raises(MapInputNotArrayError, match="maps over its input in step 'each'"):
        create_schedule(engine, "fan_out", Cron("0 3 * * *", input={"n": 1}))
    create_schedule(engine, "fan_out", Cron("0 3 * * *", input=[1, 2]))
    with pytest.raises(MapInputNotArrayError):
        update_schedule(engine, "fan_out", input={"n": 1})
    assert get_schedule(engine, "fan_out").cron.input == [1, 2]


def test_a_schedule_created_in_a_rolled_back_session_does_not_exist(engine: Engine) -> None:
    with Session(engine) as session:
        create_schedule(session, Cleanup, Cron("* * * * *"))
        assert [s.name for s in list_schedules(session)] == ["cleanup"]
        session.rollback()
    assert list_schedules(engine) == []


def test_a_due_tick_starts_one_run_carrying_its_time(engine: Engine) -> None:
    create_schedule(engine, Cleanup, Cron("0 3 * * *", input={"deep": False}))
    set_next_fire(engine, "cleanup", T0)
    fired = fire(engine, T0 + timedelta(seconds=1))
    assert [(name, tick) for name, tick, _ in fired] == [("cleanup", T0)]
    (run,) = runs(engine, "cleanup")
    assert run["input"] == {"deep": False, "scheduled_at": "2026-01-01T03:00:00+00:00"}
    assert run["run_id"] == fired[0][2]
    schedule = get_schedule(engine, "cleanup")
    assert schedule.next_fire_at == T0 + DAY
    assert (schedule.last_fire_at, schedule.last_run_id) == (T0, fired[0][2])


def test_a_tick_fires_only_once_even_when_the_schedule_is_reset(engine: Engine) -> None:
    create_schedule(engine, Cleanup, Cron("0 3 * * *"))
    set_next_fire(engine, "cleanup", T0)
    assert len(fire(engine, T0)) == 1
    # As if a second scheduler had read the schedule before the first one moved it on.
    set_next_fire(engine, "cleanup", T0)
    assert fire(engine, T0) == []
    assert len(runs(engine, "cleanup")) == 1


@pytest.mark.parametrize(
    ("missed", "expected_ticks"),
    [
        ("latest", [T0 + 3 * DAY]),
        ("all", [T0, T0 + DAY, T0 + 2 * DAY, T0 + 3 * DAY]),
        ("none", []),
    ],
)
def test_missed_ticks_follow_the_policy(
    engine: Engine, missed: Any, expected_ticks: list[datetime]
) -> None:
    create_schedule(engine, Cleanup, Cron("0 3 * * *", missed=missed))
    set_next_fire(engine, "cleanup", T0)
    now = T0 + 3 * DAY + timedelta(hours=5)  # no scheduler ran for three days and five hours
    assert [tick for _, tick, _ in fire(engine, now)] == expected_ticks
    assert [run["fire_time"] for run in runs(engine, "cleanup")] == expected_ticks
    assert get_schedule(engine, "cleanup").next_fire_at == T0 + 4 * DAY


def test_all_catches_up_at_most_its_limit(engine: Engine) -> None:
    create_schedule(engine, Cleanup, Cron("0 3 * * *", missed="all", catch_up_limit=2))
    set_next_fire(engine, "cleanup", T0)
    ticks = [tick for _, tick, _ in fire(engine, T0 + 9 * DAY)]
    assert ticks == [T0 + 8 * DAY, T0 + 9 * DAY]


def test_none_still_fires_a_tick_within_grace(engine: Engine) -> None:
    create_schedule(engine, Cleanup, Cron("0 3 * * *", missed="none", grace=30))
    set_next_fire(engine, "cleanup", T0)
    assert [tick for _, tick, _ in fire(engine, T0 + timedelta(seconds=29))] == [T0]


def test_a_paused_schedule_does_not_fire_and_resumes_from_now(engine: Engine) -> None:
    create_schedule(engine, Cleanup, Cron("0 3 * * *"))
    paused = pause_schedule(engine, "cleanup")
    set_next_fire(engine, "cleanup", T0)
    # A paused schedule has no next fire, wherever it is read (the API, --json, the dashboard).
    assert paused.next_fire_at is None
    assert [s.next_fire_at for s in list_schedules(engine)] == [None]
    assert get_schedule(engine, "cleanup").next_fire_at is None
    assert fire(engine, T0 + DAY) == []
    resumed = resume_schedule(engine, "cleanup")
    assert resumed.next_fire_at is not None
    assert resumed.next_fire_at > datetime.now(UTC)  # ticks while paused are not made up
    assert runs(engine, "cleanup") == []


def test_trigger_starts_a_run_now_and_keeps_the_next_tick(engine: Engine) -> None:
    before = create_schedule(engine, Cleanup, Cron("0 3 * * *", input={"deep": True}))
    pause_schedule(engine, "cleanup")
    run_id = trigger_schedule(engine, "cleanup")
    (run,) = runs(engine, "cleanup")
    assert (run["run_id"], run["manual"], run["schedule_name"]) == (run_id, True, "cleanup")
    assert run["input"]["deep"] is True
    assert datetime.fromisoformat(run["input"]["scheduled_at"]) == run["fire_time"]
    with engine.begin() as connection:  # paused, it shows none; the stored tick is kept
        stored = connection.execute(
            sa.text(
                "SELECT next_fire_at FROM pgflow_python.schedules WHERE schedule_name = 'cleanup'"
            )
        ).scalar_one()
    assert stored == before.next_fire_at


def test_a_run_that_cannot_start_is_recorded_and_the_schedule_moves_on(engine: Engine) -> None:
    # A map flow's schedule created by SQL with an object input: the start is refused.
    class Fan(Flow, slug="fan"):
        @step
        def only(self, input: Any) -> int:
            return 1

    register(engine, Fan)
    create_schedule(engine, Cleanup, Cron("0 3 * * *"))
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO pgflow_python.schedules (schedule_name, flow_slug, cron, input,"
                " next_fire_at) VALUES ('broken', 'fan', '0 3 * * *', '{}', :t0),"
                " ('bad_zone', 'fan', '0 3 * * *', '{}', :t0)"
            ),
            {"t0": T0},
        )
        connection.execute(
            sa.text(
                "UPDATE pgflow_python.schedules SET timezone = 'Nowhere/Land'"
                " WHERE schedule_name = 'bad_zone'"
            )
        )
        connection.execute(sa.text("DELETE FROM pgflow.deps WHERE flow_slug = 'fan'"))
        connection.execute(
            sa.text("UPDATE pgflow.steps SET step_type = 'map' WHERE flow_slug = 'fan'")
        )
    set_next_fire(engine, "cleanup", T0)
    with engine.begin() as connection:
        done = fire_due(connection, now=T0)
    assert [(name, flow) for name, flow, _, _ in done.fired] == [("cleanup", "cleanup")]
    assert set(done.errors) == {"broken", "bad_zone"}
    assert "unknown time zone" in done.errors["bad_zone"]
    broken = get_schedule(engine, "broken")
    assert broken.last_error is not None
    assert "maps over its input" in broken.last_error
    assert broken.next_fire_at == T0 + DAY


def test_sync_schedules_creates_and_updates_declared_schedules(engine: Engine) -> None:
    assert sync_schedules(engine, Cleanup, Digest) == [
        "created cleanup",
        "created digest_morning",
        "created digest_evening",
    ]
    assert sync_schedules(engine, Cleanup, Digest) == []
    assert all(s.declared for s in list_schedules(engine))
    assert get_schedule(engine, "digest_morning").cron.timezone == "Europe/Paris"
    pause_schedule(engine, "cleanup")
    update_schedule(engine, "cleanup", expression="0 4 * * *")
    assert sync_schedules(engine, Cleanup) == ["updated cleanup"]
    cleanup = get_schedule(engine, "cleanup")
    assert (cleanup.cron.expression, cleanup.paused) == ("0 3 * * *", True)


def test_dropping_a_flow_drops_its_schedules(engine: Engine) -> None:
    sync_schedules(engine, Digest)
    trigger_schedule(engine, "digest_morning")
    with engine.begin() as connection:
        connection.execute(
            sa.text("SELECT pgflow_python.delete_flow('digest', delete_runs => true)")
        )
    assert list_schedules(engine) == []


@pytest.mark.anyio
async def test_async_twins(engine: Engine, pgflow_database: URL) -> None:
    async_engine = create_async_engine(pgflow_database.set(drivername="postgresql+psycopg"))
    try:
        created = await create_schedule_async(async_engine, Cleanup, Cron("0 3 * * *"))
        assert created.name == "cleanup"
        assert await sync_schedules_async(async_engine, Digest) == [
            "created digest_morning",
            "created digest_evening",
        ]
        assert [s.name for s in await list_schedules_async(async_engine, Cleanup)] == ["cleanup"]
        assert (await pause_schedule_async(async_engine, "cleanup")).paused
        run_id = await trigger_schedule_async(async_engine, "cleanup")
        assert (await get_schedule_async(async_engine, "cleanup")).paused
        assert runs(engine, "cleanup")[0]["run_id"] == run_id
    finally:
        await async_engine.dispose()


@pytest.mark.anyio
async def test_the_scheduler_loop_fires_every_second(engine: Engine) -> None:
    create_schedule(engine, Cleanup, Cron("* * * * * *", missed="all"))
    with anyio.fail_after(20):
        async with running_worker(engine, Cleanup):
            while len(runs(engine, "cleanup")) < 3:
                await anyio.sleep(0.1)
    ticks = [run["fire_time"] for run in runs(engine, "cleanup")]
    assert all(b - a == timedelta(seconds=1) for a, b in itertools.pairwise(ticks))


@pytest.mark.anyio
@pytest.mark.parametrize("scheduler", [True, False])
async def test_a_worker_fires_schedules_unless_told_not_to(engine: Engine, scheduler: bool) -> None:
    # Yearly, long overdue: a scheduler fires it on its first pass, and not again this year.
    create_schedule(engine, Cleanup, Cron("0 3 1 1 *", missed="latest"))
    set_next_fire(engine, "cleanup", T0)
    async with running_worker(engine, Cleanup, scheduler=scheduler):
        # The worker is serving once it completes a run started after it came up.
        manual = trigger_schedule(engine, "cleanup")
        assert (await wait_until_finished(engine, manual))["status"] == "completed"
        if scheduler:
            with anyio.fail_after(20):
                while len(runs(engine, "cleanup")) < 2:
                    await anyio.sleep(0.05)
    fired = [run for run in runs(engine, "cleanup") if not run["manual"]]
    assert len(fired) == (1 if scheduler else 0)


def test_list_runs_says_which_schedule_started_a_run(engine: Engine) -> None:
    create_schedule(engine, Cleanup, Cron("0 3 * * *"))
    set_next_fire(engine, "cleanup", T0)
    ((_, tick, scheduled_run),) = fire(engine, T0)
    manual_run = trigger_schedule(engine, "cleanup")
    with engine.begin() as connection:
        plain_run = start_flow(connection, Cleanup, {})
    listed = {run.run_id: run for run in list_runs(engine, flow="cleanup")}
    assert (listed[scheduled_run].schedule_name, listed[scheduled_run].scheduled_for) == (
        "cleanup",
        tick,
    )
    assert listed[manual_run].schedule_name == "cleanup"
    assert (listed[plain_run].schedule_name, listed[plain_run].scheduled_for) == (None, None)


def test_old_fire_records_are_pruned_but_each_schedule_keeps_its_latest(engine: Engine) -> None:
    create_schedule(engine, Cleanup, Cron("0 3 * * *", missed="all"))
    set_next_fire(engine, "cleanup", T0)
    assert len(fire(engine, T0 + 2 * DAY)) == 3
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE pgflow_python.schedule_fires SET fired_at = now() - interval '8 days'")
        )
    store = PostgresStore(libpq_url(engine.url), engine=engine)
    assert anyio.run(store.prune_schedule_fires, timedelta(days=7)) == 2
    assert [run["fire_time"] for run in runs(engine, "cleanup") if run["fire_time"]] == [
        T0 + 2 * DAY
    ]


def test_changing_only_the_input_keeps_the_next_tick(engine: Engine) -> None:
    created = create_schedule(engine, Cleanup, Cron("0 3 * * *", input={"deep": False}))
    updated = update_schedule(engine, "cleanup", input={"deep": True}, missed="all")
    assert updated.next_fire_at == created.next_fire_at
    assert (updated.cron.input, updated.cron.missed) == ({"deep": True}, "all")
    moved = update_schedule(engine, "cleanup", timezone="Asia/Tokyo")
    assert moved.next_fire_at is not None
    assert moved.next_fire_at.astimezone(moved.cron.zone).hour == 3


def test_a_refused_trigger_leaves_nothing_in_the_callers_transaction(engine: Engine) -> None:
    create_schedule(engine, Cleanup, Cron("0 3 * * *"))
    with engine.begin() as connection:  # the job now maps over its input: {} is refused
        connection.execute(
            sa.text("UPDATE pgflow.steps SET step_type = 'map' WHERE flow_slug = 'cleanup'")
        )
    with Session(engine) as session:
        with pytest.raises(MapInputNotArrayError):
            trigger_schedule(session, "cleanup")
        session.commit()
    assert runs(engine, "cleanup") == []
    with engine.begin() as connection:
        fires = connection.execute(sa.text("SELECT count(*) FROM pgflow_python.schedule_fires"))
        assert fires.scalar_one() == 0
