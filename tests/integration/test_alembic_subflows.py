"""Subflow steps through Alembic: a new flow with a subflow step (and a map over one) round-trips
(``alembic check`` finds nothing once applied; the compiler's set_subflow_step is in the
revision), and a step becoming a subflow step or running another child flow is a shape change."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

from pgflow._db import create_engine
from tests.helpers.alembic_project import FLOWS, AlembicProject, acme_project

CHECKOUT = """

from pgflow import subflow


class Charge(Flow, slug="charge"):
    @step
    def charge(self, input):
        return input


class Refund(Flow, slug="refund"):
    @step
    def refund(self, input):
        return input


class Checkout(Flow, slug="checkout"):
    @step
    def cart(self, input):
        return input["items"]

    @subflow(Charge, depends_on=[cart])
    def pay(self, deps):
        return {"amount": len(deps["cart"])}

    @subflow(Charge, array=cart)
    def each(self, item):
        return item
"""

OTHER_CHILD = CHECKOUT.replace(
    "@subflow(Charge, depends_on=[cart])", "@subflow(Refund, depends_on=[cart])"
)

NOW_A_SUBFLOW = CHECKOUT.replace(
    '    @step\n    def cart(self, input):\n        return input["items"]',
    "    @subflow(Refund)\n    def cart(self, input):\n        return input",
)


def stored(url: URL) -> list[tuple[str, str, str]]:
    engine = create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT flow_slug, step_slug, child_flow_slug FROM pgflow_python.subflow_steps"
                    " ORDER BY 1, 2"
                )
            ).all()
        return [(r[0], r[1], r[2]) for r in rows]
    finally:
        engine.dispose()


@pytest.fixture
def applied(tmp_path: Path, pgflow_empty_database: URL) -> AlembicProject:
    app = acme_project(tmp_path, pgflow_empty_database)
    app.write("acme/flows.py", FLOWS + CHECKOUT)
    app.upgrade("heads")
    text = app.revision("add flows")
    assert '"subflow": "charge"' in text  # the definition, compiled at upgrade
    app.upgrade("heads")
    return app


def test_a_new_flow_with_subflow_steps_round_trips(applied: AlembicProject) -> None:
    assert stored(applied.url) == [
        ("checkout", "each", "charge"),
        ("checkout", "pay", "charge"),
    ]
    applied.run("check")  # nothing left to write


@pytest.mark.parametrize(
    ("source", "message"),
    [
        (OTHER_CHILD, "runs subflow 'refund' instead of 'charge'"),
        (NOW_A_SUBFLOW, "becomes a subflow step running 'refund'"),
    ],
)
def test_changing_what_a_step_runs_is_a_shape_change(
    applied: AlembicProject, source: str, message: str
) -> None:
    applied.write("acme/flows.py", FLOWS + source)
    with pytest.raises(Exception, match=message):
        applied.revision("change the child")
