"""A database installed by a release without run control gets it from `pgflow db install`, and
the operations then work on the runs that were already there."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL

import sql_only_flow
from pgflow import Flow, get_run, start_flow, step
from pgflow._db import create_engine
from pgflow.operations import cancel_run, resume_run
from pgflow.schema import _sources, install
from tests.helpers.database import register_flows

RUN_CONTROL = "0020_run_control.sql"


class Order(Flow, slug="order", max_attempts=1, base_delay=1):
    @step
    def charge(self, input: dict[str, int]) -> int:
        return 7


def test_install_adds_run_control_to_an_existing_database(
    pgflow_empty_database: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    everything = _sources.extension_migrations()
    before_run_control = [m for m in everything if m.name < RUN_CONTROL]
    with monkeypatch.context() as patched:
        patched.setattr(_sources, "extension_migrations", lambda: before_run_control)
        install(pgflow_empty_database)

    engine = create_engine(pgflow_empty_database, poolclass=sa.pool.NullPool)
    try:
        register_flows(engine, Order)
        with engine.begin() as connection:
            failing = sql_only_flow.start_run(connection, "order", {"n": 2})

        def explode(task: object) -> object:
            raise RuntimeError("card declined")

        sql_only_flow.drive(engine, "order", {"charge": ([], explode)}, failing)
        with engine.begin() as connection:
            running = sql_only_flow.start_run(connection, "order", {"n": 1})

        report = install(pgflow_empty_database)
        assert f"extension/{RUN_CONTROL}" in report.applied
        assert not install(pgflow_empty_database).changed

        assert cancel_run(engine, running, reason="upgrade test").cancelled
        assert resume_run(engine, failing).resumed
        sql_only_flow.drive(engine, "order", {"charge": ([], lambda task: 7)}, failing)
        assert get_run(engine, failing).output == {"charge": 7}  # type: ignore[union-attr]
        assert get_run(engine, running).cancel_reason == "upgrade test"  # type: ignore[union-attr]
        keyed = start_flow(engine, Order, {"n": 3}, idempotency_key="k")
        assert start_flow(engine, Order, {"n": 3}, idempotency_key="k") == keyed
    finally:
        engine.dispose()
