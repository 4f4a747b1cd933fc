"""docs/testing.md's flow tests run as shown, against the plugin's fixtures."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine

ROOT = Path(__file__).resolve().parents[2]


def _documented_tests() -> dict[str, Any]:
    docs = (ROOT / "docs" / "testing.md").read_text()
    source = docs.split("## Testing a flow", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict[str, Any] = {"__name__": "testing_docs"}
    exec(compile(source, "docs/testing.md", "exec"), namespace)  # noqa: S102 - our own docs
    return namespace


def test_the_documented_flow_tests_pass(pgflow_engine: Engine) -> None:
    documented = _documented_tests()
    documented["test_price_of_one_item"]()
    documented["test_totals_end_to_end"](pgflow_engine)
