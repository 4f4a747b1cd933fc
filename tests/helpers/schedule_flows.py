"""A job that worker subprocesses serve in the schedule acceptance tests."""

from __future__ import annotations

from typing import Any

from pgflow import Job


class Tick(Job, slug="tick"):
    def perform(self, input: dict[str, Any]) -> str:
        return str(input["scheduled_at"])
