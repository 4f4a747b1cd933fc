"""Fixtures shared by every test. Database fixtures come from the public plugin
(``pgflow.pytest_plugin``); helpers are plain modules in ``tests/helpers``. The runnable examples
double as test drivers (``pythonpath`` in pyproject.toml), so what the docs show is what is tested.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
