"""Shared test setup. Database fixtures come from the public plugin in ``pgflow.testing``."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The runnable examples double as test drivers, so what the docs show is what is tested.
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "tests"))


import pytest  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
