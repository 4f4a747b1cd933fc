"""Flows with wait steps served by worker subprocesses (tests/acceptance/test_wait_processes.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pgflow import Flow, step, wait_step


class Approval(Flow, slug="proc_approval"):
    @step
    def draft(self, input: dict[str, int]) -> dict[str, int]:
        return {"n": input["n"]}

    @wait_step(depends_on=[draft], timeout=timedelta(hours=1))
    def approval(self) -> None: ...

    @step(depends_on=[draft, approval])
    def pay(self, deps: dict[str, Any]) -> dict[str, Any]:
        return {"n": deps["draft"]["n"], "approved_by": deps["approval"]["by"]}


class Quick(Flow, slug="proc_quick"):
    @step
    def one(self, input: dict[str, int]) -> int:
        return input["n"] * 2

    @step(depends_on=[one])
    def two(self, deps: dict[str, int]) -> int:
        return deps["one"] + 1


class Webhook(Flow, slug="proc_webhook"):
    @wait_step(timeout=timedelta(hours=1))
    def settled(self) -> None: ...

    @step(depends_on=[settled])
    def ship(self, deps: dict[str, Any]) -> Any:
        return deps["settled"]
