"""Schedule declarations: checks at definition time, tick arithmetic, DST, missed-tick policies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from pgflow import Flow, Job, map_step, step
from pgflow.errors import InvalidScheduleError
from pgflow.schedules import Cron, schedules_of

NEW_YORK = ZoneInfo("America/New_York")


def local(year: int, month: int, day: int, hour: int, minute: int, *, fold: int = 0) -> datetime:
    """A New York wall-clock time, in UTC."""
    return datetime(year, month, day, hour, minute, tzinfo=NEW_YORK, fold=fold).astimezone(UTC)


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("61 * * * *", "Bad minute"),
        ("* * *", "Wrong number of fields"),
        ("0 3 * * * * *", "Wrong number of fields"),
        ("0 3 31 2 *", "invalid cron expression"),
        ("every day", "invalid cron expression"),
    ],
)
def test_an_invalid_cron_expression_fails_at_definition(expression: str, says: str) -> None:
    with pytest.raises(InvalidScheduleError, match=says) as raised:
        Cron(expression)
    assert "5 fields" in str(raised.value)


def test_an_unknown_time_zone_fails_at_definition() -> None:
    with pytest.raises(InvalidScheduleError, match="unknown time zone 'Europe/Pariss'"):
        Cron("0 3 * * *", timezone="Europe/Pariss")
    with pytest.raises(InvalidScheduleError, match="unknown time zone"):
        Cron("0 3 * * *", timezone="../../etc/passwd")


def test_a_class_with_a_bad_schedule_is_not_created() -> None:
    with pytest.raises(InvalidScheduleError, match="Bad hour"):

        class Nightly(Flow, schedule=Cron("0 25 * * *")):
            @step
            def only(self, input: Any) -> int:
                return 1


@pytest.mark.parametrize(
    ("arguments", "says"),
    [
        ({"missed": "some"}, "missed must be one of"),
        ({"catch_up_limit": 0}, "catch_up_limit must be an integer of at least 1"),
        ({"grace": -1}, "grace must be an integer of at least 0"),
        ({"input": {"when": datetime.now()}}, "input is not JSON"),
        ({"input": {"scheduled_at": 1}}, "already has the key 'scheduled_at'"),
        ({"name": "1st"}, "invalid schedule name"),
    ],
)
def test_bad_options_fail_at_definition(arguments: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidScheduleError, match=says):
        Cron("* * * * *", **arguments)


class Nightly(Flow, slug="nightly", schedule=Cron("0 3 * * *", input={"full": True})):
    @step
    def only(self, input: dict[str, Any]) -> int:
        return 1


class Reports(
    Job,
    slug="reports",
    schedule=[
        Cron("0 8 * * 1-5", name="reports_morning", timezone="Europe/Paris"),
        Cron("0 18 * * 1-5", name="reports_evening", timezone="Europe/Paris"),
    ],
):
    def perform(self, input: Any) -> None:
        return None


def test_declared_schedules_are_bound_to_their_flow() -> None:
    (nightly,) = schedules_of(Nightly)
    assert (nightly.name, nightly.flow_slug, nightly.expression) == (
        "nightly",
        "nightly",
        "0 3 * * *",
    )
    assert [s.name for s in schedules_of(Reports)] == ["reports_morning", "reports_evening"]
    assert {s.flow_slug for s in schedules_of(Reports)} == {"reports"}


def test_several_schedules_on_one_class_need_names() -> None:
    with pytest.raises(InvalidScheduleError, match="give each a name"):

        class Twice(Job, schedule=[Cron("0 8 * * *"), Cron("0 9 * * *")]):
            def perform(self, input: Any) -> None:
                return None


def test_a_flow_mapping_over_its_input_needs_a_list_input() -> None:
    with pytest.raises(InvalidScheduleError, match="input must be a list"):

        class Fan(Flow, schedule=Cron("0 3 * * *")):
            @map_step
            def each(self, item: int) -> int:
                return item

    class FanList(Flow, schedule=Cron("0 3 * * *", input=[1, 2])):
        @map_step
        def each(self, item: int) -> int:
            return item

    assert schedules_of(FanList)[0].run_input(datetime.now(UTC)) == [1, 2]


def test_an_object_input_carries_the_tick_in_the_schedule_zone() -> None:
    cron = Cron("0 3 * * *", input={"full": True}, timezone="Europe/Paris")
    tick = datetime(2026, 1, 15, 2, 0, tzinfo=UTC)
    assert cron.run_input(tick) == {"full": True, "scheduled_at": "2026-01-15T03:00:00+01:00"}
    assert Cron("0 3 * * *", input={"a": 1}, time_key=None).run_input(tick) == {"a": 1}
    assert Cron("0 3 * * *", time_key="at").run_input(tick) == {"at": "2026-01-15T02:00:00+00:00"}


def test_the_declared_input_is_copied() -> None:
    given = {"items": [1]}
    cron = Cron("* * * * *", input=given)
    given["items"].append(2)
    assert cron.input == {"items": [1]}


def test_a_seconds_field_is_optional_and_leads() -> None:
    start = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    every_ten = Cron("*/10 * * * * *")
    assert every_ten.next_after(start) == start + timedelta(seconds=10)
    assert Cron("*/10 * * * *").next_after(start) == start + timedelta(minutes=10)


def test_spring_forward_a_skipped_0230_runs_once_at_0300() -> None:
    # 2026-03-08 in New York: 02:00 EST jumps to 03:00 EDT; 02:30 does not exist that day.
    cron = Cron("30 2 * * *", timezone="America/New_York")
    ticks = [cron.next_after(local(2026, 3, 7, 12, 0))]
    ticks.append(cron.next_after(ticks[-1]))
    assert ticks == [local(2026, 3, 8, 3, 0), local(2026, 3, 9, 2, 30)]


def test_fall_back_a_repeated_0130_runs_once() -> None:
    # 2026-11-01 in New York: 02:00 EDT falls back to 01:00 EST; 01:30 happens twice.
    cron = Cron("30 1 * * *", timezone="America/New_York")
    first = cron.next_after(local(2026, 10, 31, 12, 0))
    second = cron.next_after(first)
    assert first == local(2026, 11, 1, 1, 30, fold=0)  # the first 01:30 (EDT, 05:30 UTC)
    assert first == datetime(2026, 11, 1, 5, 30, tzinfo=UTC)
    assert second == local(2026, 11, 2, 1, 30)


def test_fall_back_an_hourly_schedule_runs_in_both_hours() -> None:
    cron = Cron("30 * * * *", timezone="America/New_York")
    tick = cron.next_after(datetime(2026, 11, 1, 4, 0, tzinfo=UTC))  # 00:00 EDT
    ticks = [tick]
    for _ in range(3):
        ticks.append(cron.next_after(ticks[-1]))
    # 00:30 EDT, 01:30 EDT, 01:30 EST, 02:30 EST: every real hour once.
    assert [t.hour for t in ticks] == [4, 5, 6, 7]


def test_the_latest_policy_fires_once_for_the_most_recent_missed_tick() -> None:
    cron = Cron("* * * * *")
    first = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    now = first + timedelta(minutes=10, seconds=30)
    assert cron.due(first, now) == [first + timedelta(minutes=10)]
    assert cron.due(now + timedelta(minutes=1), now) == []


def test_the_all_policy_fires_every_missed_tick_up_to_its_limit() -> None:
    first = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
    now = first + timedelta(minutes=10)
    assert len(Cron("* * * * *", missed="all").due(first, now)) == 11
    capped = Cron("* * * * *", missed="all", catch_up_limit=3).due(first, now)
    assert capped == [now - timedelta(minutes=2), now - timedelta(minutes=1), now]


def test_the_none_policy_fires_only_a_tick_within_grace() -> None:
    cron = Cron("0 3 * * *", missed="none", grace=60)
    tick = datetime(2026, 1, 1, 3, 0, tzinfo=UTC)
    assert cron.due(tick, tick + timedelta(seconds=59)) == [tick]
    assert cron.due(tick, tick + timedelta(hours=6)) == []


def test_plain_data_round_trips() -> None:
    (cron,) = schedules_of(Nightly)
    assert cron.to_dict() == {
        "name": "nightly",
        "flow_slug": "nightly",
        "cron": "0 3 * * *",
        "input": {"full": True},
    }
    assert Cron.from_dict(cron.to_dict()) == cron
    with pytest.raises(InvalidScheduleError, match="unknown schedule keys"):
        Cron.from_dict({"cron": "* * * * *", "every": 1})


def test_six_field_expressions_follow_the_wall_clock_at_dst_changes() -> None:
    skipped = Cron("0 30 2 * * *", timezone="America/New_York")
    assert skipped.next_after(local(2026, 3, 7, 12, 0)) == local(2026, 3, 9, 2, 30)
    twice = Cron("0 30 1 * * *", timezone="America/New_York")
    first = twice.next_after(local(2026, 10, 31, 12, 0))
    assert (first, twice.next_after(first)) == (
        datetime(2026, 11, 1, 5, 30, tzinfo=UTC),  # 01:30 EDT
        datetime(2026, 11, 1, 6, 30, tzinfo=UTC),  # 01:30 EST
    )
