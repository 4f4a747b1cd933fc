"""examples/dashboard_app.py (shown in docs/dashboard.md): the dashboard mounted in an app."""

from __future__ import annotations

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
