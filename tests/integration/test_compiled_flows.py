"""Compiled SQL registers exactly the defined flows, and upstream runs them."""

from __future__ import annotations

import uuid
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

import sql_only_flow
from myapp.flows import AnalyzeWebsite, SendEmail, Thumbnails
from pgflow.definition import StepType
from pgflow.dsl import definition_of
from tests.helpers.database import register_flows


def test_database_holds_the_definition_shape_options_and_type(pgflow_engine: Engine) -> None:
    for flow_class in (AnalyzeWebsite, Thumbnails, SendEmail):
        register_flows(pgflow_engine, flow_class)
    with pgflow_engine.begin() as connection:
        flows = connection.execute(
            sa.text(
                "SELECT flow_slug, flow_type, opt_max_attempts, opt_base_delay, opt_timeout"
                " FROM pgflow.flows ORDER BY flow_slug"
            )
        ).all()
        steps = connection.execute(
            sa.text(
                "SELECT step_slug, step_type, step_index, opt_max_attempts, opt_start_delay,"
                " coalesce((SELECT array_agg(dep_slug ORDER BY dep_slug) FROM pgflow.deps d"
                "  WHERE d.flow_slug = s.flow_slug AND d.step_slug = s.step_slug), '{}')"
                " FROM pgflow.steps s WHERE flow_slug = 'analyze_website' ORDER BY step_index"
            )
        ).all()
    assert [tuple(f) for f in flows] == [
        ("analyze_website", "flow", 3, 1, 60),
        ("send_email", "job", 5, 5, 60),  # omitted: create_flow defaults (3, 5, 60)
        ("thumbnails", "flow", 3, 5, 60),
    ]
    assert [tuple(s) for s in steps] == [
        ("website", "single", 0, None, None, []),
        ("sentiment", "single", 1, None, None, ["website"]),
        ("summary", "single", 2, None, None, ["website"]),
        ("save", "single", 3, 5, 1, ["sentiment", "summary"]),
    ]


def test_a_compiled_map_flow_runs_to_completion(pgflow_engine: Engine) -> None:
    definition = definition_of(Thumbnails)
    assert definition.step("resize").step_type is StepType.MAP
    register_flows(pgflow_engine, Thumbnails)
    # Upstream 0.8.1 task input: a map task gets its element; a dependent step {"run", deps}.
    steps: dict[str, tuple[list[str], sql_only_flow.Handler]] = {
        "resize": ([], lambda item: f"{item}@200px"),
        "upload": (["resize"], lambda item: f"cdn/{item}"),
        "publish": (
            ["upload"],
            lambda task: {"count": len(task["upload"]), "urls": task["upload"]},
        ),
    }
    with pgflow_engine.begin() as connection:
        run_id = sql_only_flow.start_run(connection, "thumbnails", ["a.png", "b.png", "c.png"])
    run: dict[str, Any] = sql_only_flow.drive(pgflow_engine, "thumbnails", steps, run_id)
    assert run["status"] == "completed"
    assert run["output"] == {
        "publish": {
            "count": 3,
            "urls": ["cdn/a.png@200px", "cdn/b.png@200px", "cdn/c.png@200px"],
        }
    }
    assert isinstance(run_id, uuid.UUID)
