"""The worker reads the installed schema at start and refuses one it cannot drive."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from pgflow import Flow, step
from pgflow.errors import IncompatibleSchemaError, SchemaError
from pgflow.schema import install, status
from pgflow.worker import Worker
from pgflow.worker._startup import check_schema
from tests.helpers import database

pytestmark = pytest.mark.anyio


class Echo(Flow, slug="echo"):
    @step
    def echo(self, input: Any) -> Any:
        return input


async def serve_once(url: URL) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        await Worker([Echo], engine).serve()
    finally:
        engine.dispose()


async def test_a_database_without_the_schema_is_refused(pgflow_empty_database: URL) -> None:
    with pytest.raises(SchemaError, match=r"not installed or not complete.*pgflow db install"):
        await serve_once(pgflow_empty_database)


async def test_a_schema_installed_only_by_typescript_tooling_asks_for_db_install(
    pgflow_empty_database: URL,
) -> None:
    # What a TypeScript deployment leaves: pgmq and @pgflow/core's migrations, none of ours.
    install(pgflow_empty_database)
    database.run_sql(pgflow_empty_database, "DROP SCHEMA pgflow_python CASCADE")
    with pytest.raises(SchemaError, match=r"adopts a schema installed by TypeScript"):
        await serve_once(pgflow_empty_database)
    install(pgflow_empty_database)  # adopts, and adds pgflow-python's SQL
    assert status(pgflow_empty_database).up_to_date
    engine = sa.create_engine(pgflow_empty_database, poolclass=sa.pool.NullPool)
    check_schema(engine)  # the worker's start-up check now passes
    engine.dispose()


@pytest.mark.parametrize(
    ("upgrade", "named"),
    [
        # What a newer @pgflow/core changes: the claim record gains a column ...
        ("ALTER TYPE pgflow.step_task_record ADD ATTRIBUTE flow_input jsonb", "step_task_record"),
        # ... or the schema gains functions this release does not know.
        (
            "CREATE FUNCTION pgflow.requeue_stalled_tasks() RETURNS void LANGUAGE sql AS ''",
            "requeue_stalled_tasks",
        ),
    ],
)
async def test_a_schema_upgraded_by_other_tooling_is_refused_with_the_reason(
    pgflow_database: URL, pgflow_engine: Engine, upgrade: str, named: str
) -> None:
    database.run_sql(pgflow_database, upgrade)
    with pytest.raises(IncompatibleSchemaError) as refused:
        await serve_once(pgflow_database)
    message = str(refused.value)
    assert "no longer @pgflow/core 0.8.1" in message
    assert named in message
    assert "TypeScript" in message
    with pgflow_engine.begin() as connection:  # nothing was claimed or registered
        assert connection.execute(sa.text("SELECT count(*) FROM pgflow.workers")).scalar() == 0
    assert named in (status(pgflow_database).problem or "")
    with pytest.raises(IncompatibleSchemaError, match=named):
        install(pgflow_database)
