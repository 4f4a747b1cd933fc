"""Concurrency limits through Alembic: autogenerate writes adding, changing and removing a
flow's limit as an options update, upgrade and downgrade apply it at once, and ``alembic
check`` finds nothing once applied."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from pgflow._db import create_engine
from tests.helpers.alembic_project import FLOWS, AlembicProject, acme_project, flow_calls

JOB = 'class SendMail(Job, slug="send_mail", max_attempts=5'
LIMITED = FLOWS.replace(
    "from pgflow.dsl import", "from pgflow import Concurrency\nfrom pgflow.dsl import"
).replace(JOB, JOB + ', concurrency=Concurrency(2, key="to")')
CHANGED = LIMITED.replace('Concurrency(2, key="to")', "Concurrency(5)")


def limits(url: URL) -> dict[str, tuple[int, Any]]:
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT flow_slug, max_running, key_path FROM pgflow_python.concurrency_limits"
                )
            )
            return {r.flow_slug: (r.max_running, r.key_path) for r in rows}
    finally:
        engine.dispose()


def revision_id(text: str) -> str:
    found = re.search(r"^revision\b[^=]*= ['\"](\w+)['\"]", text, re.MULTILINE)
    assert found, text
    return found.group(1)


@pytest.fixture
def applied(tmp_path: Path, pgflow_empty_database: URL) -> AlembicProject:
    app = acme_project(tmp_path, pgflow_empty_database)
    app.upgrade("heads")
    app.revision("add flows")
    app.upgrade("heads")
    return app


def test_adding_changing_and_removing_a_limit(applied: AlembicProject) -> None:
    first = applied.revision_files()[0].name.split("_")[0]
    applied.write("acme/flows.py", LIMITED)
    text = applied.revision("limit send_mail")
    assert flow_calls(text, "upgrade") == [
        (
            ["update_flow_options", "send_mail"],
            {"flow": {"concurrency": {"limit": 2, "key": ["to"]}}},
        )
    ]
    assert flow_calls(text, "downgrade") == [
        (["update_flow_options", "send_mail"], {"flow": {"concurrency": None}})
    ]
    applied.upgrade("heads")
    assert limits(applied.url) == {"send_mail": (2, ["to"])}
    applied.run("check")
    second = revision_id(text)

    applied.write("acme/flows.py", CHANGED)
    applied.revision("raise the limit")
    applied.upgrade("heads")
    assert limits(applied.url) == {"send_mail": (5, None)}
    applied.run("check")

    applied.downgrade(second)
    assert limits(applied.url) == {"send_mail": (2, ["to"])}
    applied.downgrade(first)
    assert limits(applied.url) == {}
