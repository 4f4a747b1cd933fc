"""examples/dashboard_app.py (shown in docs/dashboard.md): the dashboard mounted in an app."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
from sqlalchemy.engine import Engine

import dashboard_app
from tests.helpers.dashboard import Pipeline, register, serving, start


def test_the_mounted_dashboard_example_serves_under_its_prefix(pgflow_engine: Engine) -> None:
    register(pgflow_engine, Pipeline)
    run_id = start(pgflow_engine, "pipeline", {"n": 1})
    with serving(dashboard_app.build(pgflow_engine)) as base_url:
        assert httpx.get(base_url + "/").text == "my application"
        runs = httpx.get(base_url + "/pgflow/runs")
        assert runs.status_code == 200
        assert f'href="/pgflow/runs/{run_id}"' in runs.text
        assert "read-only" in runs.text


def test_the_docs_show_the_example_verbatim() -> None:
    root = Path(__file__).resolve().parents[2]
    docs = (root / "docs" / "dashboard.md").read_text(encoding="utf-8")
    shown = re.search(r"```python\n(.*?)```", docs, re.DOTALL)
    assert shown is not None
    example = (root / "examples" / "dashboard_app.py").read_text(encoding="utf-8")
    # The docs show the file without its module docstring.
    assert example.endswith(shown.group(1))
    assert example.startswith('"""')
