"""Wait steps and run_timeout through Alembic: a new flow with them round-trips (``alembic
check`` finds nothing once applied); changing a wait step's timeout or on_timeout, or a flow's
run_timeout, is an options update that upgrade and downgrade apply; turning a step into a wait
step is a shape change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from pgflow._db import create_engine
from tests.helpers.alembic_project import FLOWS, AlembicProject, acme_project, flow_calls

APPROVAL = """

from datetime import timedelta
from pgflow.dsl import wait_step


class Approval(Flow, slug="approval", run_timeout=timedelta(hours=1)):
    @step
    def draft(self, input):
        return input

    @wait_step(depends_on=[draft], timeout=timedelta(days=3))
    def approve(self):
        ...
"""

CHANGED = APPROVAL.replace("timedelta(hours=1)", "timedelta(hours=2)").replace(
    "timeout=timedelta(days=3))", 'timeout=timedelta(days=1), on_timeout="skip")'
)

NOW_WAITING = APPROVAL.replace(
    "    @step\n    def draft(self, input):\n        return input",
    "    @wait_step\n    def draft(self):\n        ...",
)


def stored(url: URL) -> dict[str, Any]:
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            waits = connection.execute(
                sa.text(
                    "SELECT step_slug, timeout_seconds, on_timeout FROM pgflow_python.wait_steps"
                )
            ).all()
            timeouts = connection.execute(
                sa.text(
                    "SELECT flow_slug, run_timeout_seconds FROM pgflow_python.flow_run_timeouts"
                )
            ).all()
        return {"waits": [tuple(r) for r in waits], "run_timeouts": [tuple(r) for r in timeouts]}
    finally:
        engine.dispose()


@pytest.fixture
def applied(tmp_path: Path, pgflow_empty_database: URL) -> AlembicProject:
    app = acme_project(tmp_path, pgflow_empty_database)
    app.write("acme/flows.py", FLOWS + APPROVAL)
    app.upgrade("heads")
    app.revision("add flows")
    app.upgrade("heads")
    return app


def test_a_new_flow_with_a_wait_step_and_a_run_timeout_round_trips(
    applied: AlembicProject,
) -> None:
    assert stored(applied.url) == {
        "waits": [("approve", 259200, "fail")],
        "run_timeouts": [("approval", 3600)],
    }
    applied.run("check")  # nothing left to write


def test_changed_wait_options_and_run_timeout_are_an_options_update(
    applied: AlembicProject,
) -> None:
    first = applied.revision_files()[0].name.split("_")[0]
    applied.write("acme/flows.py", FLOWS + CHANGED)
    text = applied.revision("shorter waits")
    assert flow_calls(text, "upgrade") == [
        (
            ["update_flow_options", "approval"],
            {
                "flow": {"run_timeout": 7200},
                "steps": {"approve": {"wait_timeout": 86400, "on_timeout": "skip"}},
            },
        )
    ]
    applied.upgrade("heads")
    assert stored(applied.url) == {
        "waits": [("approve", 86400, "skip")],
        "run_timeouts": [("approval", 7200)],
    }
    applied.run("check")
    applied.downgrade(first)
    assert stored(applied.url) == {
        "waits": [("approve", 259200, "fail")],
        "run_timeouts": [("approval", 3600)],
    }


def test_turning_a_step_into_a_wait_step_is_a_shape_change(applied: AlembicProject) -> None:
    applied.write("acme/flows.py", FLOWS + NOW_WAITING)
    with pytest.raises(Exception, match="becomes a wait step"):
        applied.revision("draft waits")
