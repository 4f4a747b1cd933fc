"""Conditions through Alembic: autogenerate writes adding, changing and removing a condition as
an options update (not a shape change), upgrade and downgrade apply it, and a new flow with
conditions round-trips (``alembic check`` finds nothing once applied)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from pgflow._db import create_engine
from tests.helpers.alembic_project import FLOWS, AlembicProject, acme_project, flow_calls

CONDITIONAL = FLOWS.replace(
    "    @step(depends_on=[name])\n    def greeting",
    '    @step(depends_on=[name], if_not={"name": "Nobody"}, retries_exhausted="skip")\n'
    "    def greeting",
)

ROUTED = """
class Routed(Flow, slug="routed"):
    @step
    def classify(self, input):
        return {"kind": input["kind"]}

    @step(depends_on=[classify], if_={"classify": {"kind": "big: 100%"}}, when_unmet="fail")
    def big(self, deps):
        return "big"
"""


def conditions(url: URL) -> dict[tuple[str, str], dict[str, Any]]:
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            rows = connection.execute(sa.text("SELECT * FROM pgflow_python.step_conditions"))
            return {(r["flow_slug"], r["step_slug"]): dict(r) for r in rows.mappings()}
    finally:
        engine.dispose()


@pytest.fixture
def applied(tmp_path: Path, pgflow_empty_database: URL) -> AlembicProject:
    app = acme_project(tmp_path, pgflow_empty_database)
    app.upgrade("heads")
    app.revision("add flows")
    app.upgrade("heads")
    return app


def test_adding_and_removing_a_condition_is_an_options_update(applied: AlembicProject) -> None:
    first = applied.revision_files()[0].name.split("_")[0]
    applied.write("acme/flows.py", CONDITIONAL)
    text = applied.revision("add a condition")

    assert flow_calls(text, "upgrade") == [
        (
            ["update_flow_options", "greeting"],
            {"steps": {"greeting": {"if_not": {"name": "Nobody"}, "retries_exhausted": "skip"}}},
        )
    ]
    assert flow_calls(text, "downgrade") == [
        (
            ["update_flow_options", "greeting"],
            {"steps": {"greeting": {"if_not": None, "retries_exhausted": None}}},
        )
    ]
    applied.upgrade("heads")
    stored = conditions(applied.url)[("greeting", "greeting")]
    assert stored["forbidden_input_pattern"] == {"name": "Nobody"}
    assert (stored["when_unmet"], stored["when_exhausted"]) == ("skip", "skip")
    applied.run("check")

    applied.downgrade(first)
    assert conditions(applied.url) == {}


def test_a_new_flow_with_conditions_round_trips(applied: AlembicProject) -> None:
    applied.write("acme/flows.py", FLOWS + ROUTED)
    text = applied.revision("routed")
    assert '"if_": {"classify": {"kind": "big: 100%"}}' in text
    applied.upgrade("heads")
    stored = conditions(applied.url)[("routed", "big")]
    assert stored["required_input_pattern"] == {"classify": {"kind": "big: 100%"}}
    assert stored["when_unmet"] == "fail"
    applied.run("check")  # nothing left to write: the stored condition equals the code's
