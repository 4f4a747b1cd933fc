"""Flows of the subflow process test (`pgflow run-worker tests.helpers.subflow_process_flows`)."""

from __future__ import annotations

import os
import time
from typing import Any

from pgflow import Flow, step, subflow


class Child(Flow, slug="proc_child"):
    @step
    def echo(self, input: dict[str, Any]) -> dict[str, Any]:
        return {"started_by": input["by"]}


class Parent(Flow, slug="proc_parent", timeout=10, max_attempts=3, base_delay=1):
    @subflow(Child)
    def child(self, input: dict[str, Any]) -> dict[str, Any]:
        time.sleep(input["seconds"])  # the test kills the first worker in here
        return {"by": os.getpid()}
