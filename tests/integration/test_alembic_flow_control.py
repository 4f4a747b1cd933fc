"""Priorities (and rate limits) through Alembic: autogenerate writes adding, changing and
removing them as options updates, upgrade and downgrade apply them at once, and ``alembic
check`` finds nothing once applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from pgflow._db import create_engine
from tests.helpers.alembic_project import FLOWS, AlembicProject, acme_project, flow_calls
from tests.integration.test_alembic_concurrency import revision_id

JOB = 'class SendMail(Job, slug="send_mail", max_attempts=5'
PRIORITIZED = FLOWS.replace(JOB, JOB + ", priority=3")
CHANGED = PRIORITIZED.replace("priority=3", "priority=-2")


def stored(url: URL, statement: str) -> dict[str, Any]:
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            return {r[0]: r[1] for r in connection.execute(sa.text(statement))}
    finally:
        engine.dispose()


def priorities(url: URL) -> dict[str, Any]:
    return stored(url, "SELECT flow_slug, priority FROM pgflow_python.flow_priorities")


@pytest.fixture
def applied(tmp_path: Path, pgflow_empty_database: URL) -> AlembicProject:
    app = acme_project(tmp_path, pgflow_empty_database)
    app.upgrade("heads")
    app.revision("add flows")
    app.upgrade("heads")
    return app


def test_adding_changing_and_removing_a_priority(applied: AlembicProject) -> None:
    first = applied.revision_files()[0].name.split("_")[0]
    applied.write("acme/flows.py", PRIORITIZED)
    text = applied.revision("prioritize send_mail")
    assert flow_calls(text, "upgrade") == [
        (["update_flow_options", "send_mail"], {"flow": {"priority": 3}})
    ]
    assert flow_calls(text, "downgrade") == [
        (["update_flow_options", "send_mail"], {"flow": {"priority": None}})
    ]
    applied.upgrade("heads")
    assert priorities(applied.url) == {"send_mail": 3}
    applied.run("check")
    second = revision_id(text)

    applied.write("acme/flows.py", CHANGED)
    applied.revision("lower it")
    applied.upgrade("heads")
    assert priorities(applied.url) == {"send_mail": -2}
    applied.run("check")

    applied.downgrade(second)
    assert priorities(applied.url) == {"send_mail": 3}
    applied.downgrade(first)
    assert priorities(applied.url) == {}


RATED = FLOWS.replace(
    "from pgflow.dsl import", "from pgflow import RateLimit\nfrom pgflow.dsl import"
).replace(JOB, JOB + ', rate_limit=RateLimit(60, per=60, key="to")')
RENAMED = RATED.replace('RateLimit(60, per=60, key="to")', 'RateLimit.named("smtp", 10, per=1.5)')


def rate_limits(url: URL) -> dict[str, Any]:
    return stored(
        url,
        "SELECT flow_slug, jsonb_build_array(max_starts, extract(epoch FROM period)::float8,"
        " key_path, budget) FROM pgflow_python.rate_limits",
    )


def test_adding_changing_and_removing_a_rate_limit(applied: AlembicProject) -> None:
    first = applied.revision_files()[0].name.split("_")[0]
    applied.write("acme/flows.py", RATED)
    text = applied.revision("rate-limit send_mail")
    assert flow_calls(text, "upgrade") == [
        (
            ["update_flow_options", "send_mail"],
            {"flow": {"rate_limit": {"limit": 60, "per": 60.0, "key": ["to"]}}},
        )
    ]
    assert flow_calls(text, "downgrade") == [
        (["update_flow_options", "send_mail"], {"flow": {"rate_limit": None}})
    ]
    applied.upgrade("heads")
    assert rate_limits(applied.url) == {"send_mail": [60, 60.0, ["to"], ":send_mail:"]}
    applied.run("check")
    second = revision_id(text)

    applied.write("acme/flows.py", RENAMED)
    applied.revision("share a budget")
    applied.upgrade("heads")
    assert rate_limits(applied.url) == {"send_mail": [10, 1.5, None, "smtp"]}
    applied.run("check")

    applied.downgrade(second)
    assert rate_limits(applied.url) == {"send_mail": [60, 60.0, ["to"], ":send_mail:"]}
    applied.downgrade(first)
    assert rate_limits(applied.url) == {}


STEP_LIMITED = FLOWS.replace(
    "from pgflow.dsl import", "from pgflow import Concurrency, RateLimit\nfrom pgflow.dsl import"
).replace(
    "    @map_step\n    def resize",
    '    @map_step(concurrency=Concurrency(3), rate_limit=RateLimit.named("cdn", 9, per=1))\n'
    "    def resize",
)


def test_a_steps_own_limits_are_options(applied: AlembicProject) -> None:
    first = applied.revision_files()[0].name.split("_")[0]
    applied.write("acme/flows.py", STEP_LIMITED)
    text = applied.revision("limit resize")
    wanted = {
        "concurrency": {"limit": 3},
        "rate_limit": {"limit": 9, "per": 1.0, "name": "cdn"},
    }
    assert flow_calls(text, "upgrade") == [
        (["update_flow_options", "thumbnails"], {"steps": {"resize": wanted}})
    ]
    applied.upgrade("heads")
    applied.run("check")
    assert stored(
        applied.url, "SELECT step_slug, max_running FROM pgflow_python.concurrency_limits"
    ) == {"resize": 3}
    assert rate_limits(applied.url) == {"thumbnails": [9, 1.0, None, "cdn"]}
    applied.downgrade(first)
    assert rate_limits(applied.url) == {}
