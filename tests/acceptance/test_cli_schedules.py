"""``pgflow schedules list|pause|resume|trigger|delete`` as an operator runs them."""

from __future__ import annotations

import uuid

from sqlalchemy.engine import URL, Engine

from pgflow import get_run
from pgflow.schedules import Cron, create_schedule, get_schedule, list_schedules
from tests.acceptance.test_cli_db import pgflow_cli
from tests.helpers.database import register_flows
from tests.helpers.schedule_flows import Tick


def test_operating_a_schedule_from_the_command_line(
    pgflow_engine: Engine, pgflow_database: URL
) -> None:
    register_flows(pgflow_engine, Tick)
    assert pgflow_cli("schedules", "list", url=pgflow_database).stdout == "no schedules\n"
    create_schedule(pgflow_engine, Tick, Cron("0 3 * * *", name="nightly", timezone="Europe/Paris"))

    listed = pgflow_cli("schedules", "list", url=pgflow_database)
    assert listed.returncode == 0, listed.stderr
    header, row = listed.stdout.splitlines()
    assert header.split()[:5] == ["NAME", "FLOW", "CRON", "TIMEZONE", "STATE"]
    assert row.split()[:9] == ["nightly", "tick", "0", "3", "*", "*", "*", "Europe/Paris", "active"]

    paused = pgflow_cli("schedules", "pause", "nightly", url=pgflow_database)
    assert paused.returncode == 0, paused.stderr
    assert "paused" in paused.stdout
    assert get_schedule(pgflow_engine, "nightly").paused

    triggered = pgflow_cli("schedules", "trigger", "nightly", url=pgflow_database)
    assert triggered.returncode == 0, triggered.stderr
    run_id = uuid.UUID(triggered.stdout.strip())
    assert get_schedule(pgflow_engine, "nightly").paused  # a trigger does not resume

    resumed = pgflow_cli("schedules", "resume", "nightly", url=pgflow_database)
    assert "active" in resumed.stdout
    assert not get_schedule(pgflow_engine, "nightly").paused

    deleted = pgflow_cli("schedules", "delete", "nightly", url=pgflow_database)
    assert deleted.stdout == "deleted schedule nightly\n"
    assert list_schedules(pgflow_engine) == []
    missing = pgflow_cli("schedules", "pause", "nightly", url=pgflow_database)
    assert missing.returncode == 1
    assert missing.stderr == "error: no schedule is named 'nightly'\n"
    run = get_run(pgflow_engine, run_id)  # the run outlives its schedule
    assert run is not None
    assert run.flow_slug == "tick"
