"""Fixtures shared by every test. Database fixtures come from the public plugin
(``pgflow.pytest_plugin``); helpers are plain modules in ``tests/helpers``. The runnable examples
double as test drivers (``pythonpath`` in pyproject.toml), so what the docs show is what is tested.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import Phase, settings

from pgflow._db import create_engine
from pgflow._devserver import DevServer
from pgflow.testing import temporary_database

# tests/mutation.py: a mutant is caught at the first failing example; shrinking it tells nothing.
settings.register_profile("mutation", phases=[Phase.explicit, Phase.reuse, Phase.generate])


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


ORACLES = Path(__file__).parent / "sql" / "oracles.sql"


@pytest.fixture(scope="session")
def pgflow_template_database(
    pgflow_server: DevServer, pgflow_database_prefix: str
) -> Iterator[str]:
    """The plugin's template, plus the test-only oracles (``tests/sql/oracles.sql``, schema
    ``pgflow_oracles``) that the differential tests compare the product's SQL against."""
    with temporary_database(
        pgflow_server.url, install_schema=True, prefix=pgflow_database_prefix
    ) as url:
        engine = create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.begin() as connection:
                connection.exec_driver_sql(ORACLES.read_text())
        finally:
            engine.dispose()
        yield str(url.database)
