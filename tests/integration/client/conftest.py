"""The client tests' engine: a fresh database with the client test flows registered."""

from __future__ import annotations

import pytest
from sqlalchemy.engine import Engine

from tests.helpers.client_flows import ALL_FLOWS
from tests.helpers.database import register_flows


@pytest.fixture
def engine(pgflow_engine: Engine) -> Engine:
    register_flows(pgflow_engine, *ALL_FLOWS)
    return pgflow_engine
