"""``pgflow schedules list|pause|resume|trigger|delete`` as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from datetime import datetime
from pathlib import Path

from sqlalchemy.engine import URL, Engine

from pgflow import get_run
from pgflow.schedules import Cron, create_schedule, get_schedule, list_schedules
from scheduling import Digest, NightlyReport
from tests.acceptance.test_cli_db import PGFLOW, pgflow_cli
from tests.helpers import database
from tests.helpers.database import register_flows
from tests.helpers.schedule_flows import Tick

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


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
    # One line, not the whole table.
    assert paused.stdout == ("paused schedule nightly: no runs until `pgflow schedules resume`\n")
    assert get_schedule(pgflow_engine, "nightly").paused
    # A paused schedule has no next fire.
    paused_row = pgflow_cli("schedules", "list", url=pgflow_database).stdout.splitlines()[1]
    assert paused_row.split()[8:10] == ["paused", "-"]

    triggered = pgflow_cli("schedules", "trigger", "nightly", url=pgflow_database)
    assert triggered.returncode == 0, triggered.stderr
    run_id = uuid.UUID(triggered.stdout.strip())
    runs = pgflow_cli("runs", "list", url=pgflow_database)
    [run_row] = [line for line in runs.stdout.splitlines() if line.startswith(str(run_id))]
    assert run_row.endswith("schedule nightly")  # which schedule started the run
    assert get_schedule(pgflow_engine, "nightly").paused  # a trigger does not resume

    resumed = pgflow_cli("schedules", "resume", "nightly", url=pgflow_database)
    assert resumed.stdout.startswith("resumed schedule nightly: next fire 20")
    assert len(resumed.stdout.splitlines()) == 1
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


def test_sync_stores_declared_schedules(pgflow_engine: Engine, pgflow_database: URL) -> None:
    register_flows(pgflow_engine, NightlyReport, Digest)

    def sync(reference: str) -> subprocess.CompletedProcess[str]:
        # From the application's directory, as `pgflow run-worker` resolves references.
        env = {**os.environ, "DATABASE_URL": database.libpq_url(pgflow_database)}
        return subprocess.run(
            [*PGFLOW, "schedules", "sync", reference],
            cwd=EXAMPLES,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    synced = sync("scheduling")
    assert synced.returncode == 0, synced.stderr
    assert synced.stdout.splitlines() == [
        "created nightly_report",
        "created digest_morning",
        "created digest_evening",
    ]
    again = sync("scheduling:Digest")
    assert again.stdout == "declared schedules are up to date\n"


def test_schedules_list_prints_json_for_scripts(
    pgflow_engine: Engine, pgflow_database: URL
) -> None:
    register_flows(pgflow_engine, Tick)
    empty = pgflow_cli("schedules", "list", "--json", url=pgflow_database)
    assert (empty.returncode, json.loads(empty.stdout)) == (0, [])
    create_schedule(
        pgflow_engine, Tick, Cron("0 3 * * *", name="nightly", input={"size": 2}, timezone="UTC")
    )
    pgflow_cli("schedules", "pause", "nightly", url=pgflow_database)

    listed = pgflow_cli("schedules", "list", "--json", url=pgflow_database)
    assert listed.returncode == 0, listed.stderr
    [nightly] = json.loads(listed.stdout)
    stored = get_schedule(pgflow_engine, "nightly")
    assert {key: nightly[key] for key in ("name", "flow_slug", "expression", "timezone")} == {
        "name": "nightly",
        "flow_slug": "tick",
        "expression": "0 3 * * *",
        "timezone": "UTC",
    }
    assert nightly["input"] == {"size": 2}
    assert nightly["paused"] is True
    assert stored.paused_at is not None
    assert datetime.fromisoformat(nightly["paused_at"]) == stored.paused_at
    assert nightly["last_run_id"] is None
