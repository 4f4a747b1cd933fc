"""Declared schedules in Alembic autogenerate, driven through real Alembic: create, change
(expression, input, time zone), drop, and downgrades back through each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from pgflow._db import create_engine
from pgflow.schedules import fire_due, get_schedule, list_schedules, pause_schedule
from tests.helpers.alembic_project import FLOWS, AlembicProject, acme_project, flow_calls

NIGHTLY = (
    'Cron("0 3 * * *", name="mail_nightly", input={"to": "ops@example.org"}, '
    'timezone="Europe/Paris")'
)
WITH_SCHEDULE = "from pgflow.schedules import Cron\n" + FLOWS.replace(
    'class SendMail(Job, slug="send_mail", max_attempts=5):',
    f'class SendMail(Job, slug="send_mail", max_attempts=5, schedule={NIGHTLY}):',
)
CHANGED = (
    WITH_SCHEDULE.replace('"0 3 * * *"', '"30 6 * * 1-5"')
    .replace('"ops@example.org"', '"team@example.org"')
    .replace('"Europe/Paris"', '"America/New_York"')
)
CREATED = {
    "name": "mail_nightly",
    "flow_slug": "send_mail",
    "cron": "0 3 * * *",
    "input": {"to": "ops@example.org"},
    "timezone": "Europe/Paris",
}
CHANGED_DATA = {
    **CREATED,
    "cron": "30 6 * * 1-5",
    "input": {"to": "team@example.org"},
    "timezone": "America/New_York",
}


def revision_id(revision_text: str) -> str:
    return revision_text.split("Revision ID: ")[1].split(maxsplit=1)[0]


@pytest.fixture
def project(tmp_path: Path, pgflow_empty_database: URL) -> AlembicProject:
    app = acme_project(tmp_path, pgflow_empty_database)
    app.upgrade("heads")
    return app


def stored(url: URL) -> dict[str, Any]:
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        return {s.name: s for s in list_schedules(engine)}
    finally:
        engine.dispose()


def test_schedule_round_trip_create_change_drop_and_downgrades(project: AlembicProject) -> None:
    project.write("acme/flows.py", WITH_SCHEDULE)
    text = project.revision("flows and a schedule")
    first = revision_id(text)
    upgrade = flow_calls(text, "upgrade")
    assert [call[0][0] for call in upgrade] == [
        "create_flow",
        "create_flow",
        "create_flow",
        "create_schedule",
    ]
    assert upgrade[-1] == (["create_schedule", CREATED], {})
    assert flow_calls(text, "downgrade")[0] == (["drop_schedule", "mail_nightly"], {})
    project.upgrade("heads")
    (created,) = stored(project.url).values()
    assert created.cron.to_dict() == CREATED
    assert created.declared
    project.run("check")  # nothing left to generate

    # Pause state is the operator's: a migration that changes the schedule keeps it.
    engine = create_engine(project.url, poolclass=sa.pool.NullPool)
    try:
        pause_schedule(engine, "mail_nightly")
    finally:
        engine.dispose()
    project.write("acme/flows.py", CHANGED)
    text = project.revision("change the schedule")
    second = revision_id(text)
    assert flow_calls(text, "upgrade") == [(["update_schedule", CHANGED_DATA], {})]
    assert flow_calls(text, "downgrade") == [(["update_schedule", CREATED], {})]
    project.upgrade("heads")
    changed = stored(project.url)["mail_nightly"]
    assert changed.cron.to_dict() == CHANGED_DATA
    assert changed.paused
    assert changed.next_fire_at is None  # the next scheduler pass computes it in the new zone

    project.write("acme/flows.py", FLOWS)
    text = project.revision("drop the schedule")
    assert flow_calls(text, "upgrade") == [(["drop_schedule", "mail_nightly"], {})]
    assert "no longer declares schedule 'mail_nightly'" in text
    assert flow_calls(text, "downgrade") == [(["create_schedule", CHANGED_DATA], {})]
    project.upgrade("heads")
    assert stored(project.url) == {}

    project.downgrade(second)
    assert stored(project.url)["mail_nightly"].cron.to_dict() == CHANGED_DATA
    project.downgrade(first)
    assert stored(project.url)["mail_nightly"].cron.to_dict() == CREATED
    project.downgrade("-1")
    assert stored(project.url) == {}


def test_a_migrated_schedule_fires_from_the_time_it_was_applied(project: AlembicProject) -> None:
    project.write("acme/flows.py", WITH_SCHEDULE)
    project.revision("flows and a schedule")
    project.upgrade("heads")
    engine = create_engine(project.url, poolclass=sa.pool.NullPool)
    try:
        assert get_schedule(engine, "mail_nightly").next_fire_at is None
        in_three_days = datetime.now(UTC) + timedelta(days=3)
        with engine.begin() as connection:
            done = fire_due(connection, now=in_three_days)
        # "latest": one run for the most recent 03:00 in Paris, however many were missed.
        ((name, _flow, tick, _run),) = done.fired
        assert name == "mail_nightly"
        assert (
            tick.astimezone(get_schedule(engine, "mail_nightly").cron.zone).hour,
            tick.minute,
        ) == (3, 0)
        assert in_three_days - timedelta(days=1) < tick <= in_three_days
    finally:
        engine.dispose()


def test_dropping_a_flow_drops_its_schedules_first_and_downgrade_restores_them(
    project: AlembicProject,
) -> None:
    project.write("acme/flows.py", WITH_SCHEDULE)
    project.revision("flows and a schedule")
    project.upgrade("heads")
    project.write_env('alembic_pgflow.include_flows("acme.flows", drop_removed=["send_mail"])')
    project.write("acme/flows.py", FLOWS.split("class SendMail")[0])
    text = project.revision("drop send_mail")
    assert [call[0][:2] for call in flow_calls(text, "upgrade")] == [
        ["drop_schedule", "mail_nightly"],
        ["drop_flow", "send_mail"],
    ]
    project.upgrade("heads")
    assert stored(project.url) == {}
    project.downgrade("-1")
    assert stored(project.url)["mail_nightly"].cron.to_dict() == CREATED


def test_offline_mode_renders_schedule_operations_as_sql(
    project: AlembicProject, capsys: pytest.CaptureFixture[str]
) -> None:
    project.write("acme/flows.py", WITH_SCHEDULE)
    project.revision("flows and a schedule")
    capsys.readouterr()
    project.upgrade("pgflow_0002:heads", sql=True)
    sql = capsys.readouterr().out
    assert "INSERT INTO pgflow_python.schedules" in sql
    assert "'mail_nightly', 'send_mail', '0 3 * * *', 'Europe/Paris'" in sql
    assert """CAST('{"to": "ops@example.org"}' AS jsonb)""" in sql
