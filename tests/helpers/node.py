"""Drive the Node side of the interoperability tests (tests/node, installed by `make setup`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from pgflow.definition import FlowDefinition
from tests.helpers import database

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


def _node(script: str, *args: str, stdin: str | None = None) -> Any:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "@pgflow" / "core").is_dir():
        pytest.fail("Node.js and tests/node/node_modules are required: run `make setup`")
    result = subprocess.run(
        [node, str(NODE_DIR / script), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"node {script} exited {result.returncode}:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def node_worker(engine: Engine, flow_slug: str, **options: Any) -> dict[str, Any]:
    """Run tests/node/worker.mjs until the flow has no started runs (or ``maxTasks``)."""
    report: dict[str, Any] = _node(
        "worker.mjs", database.libpq_url(engine.url), flow_slug, json.dumps(options)
    )
    return report


def typescript_start(engine: Engine, flow_slug: str, inputs: list[Any]) -> list[str]:
    """Start one run per input with @pgflow/core's ``PgflowSqlClient.startFlow``."""
    run_ids: list[str] = _node(
        "start_flows.mjs", database.libpq_url(engine.url), flow_slug, json.dumps(inputs)
    )
    return run_ids


def typescript_compile(definitions: list[FlowDefinition]) -> list[list[str]]:
    """Per definition, the SQL @pgflow/dsl's ``compileFlow`` emits for that shape and options."""
    statements: list[list[str]] = _node(
        "compile_flows.mjs", stdin=json.dumps([d.to_dict() for d in definitions])
    )
    return statements
