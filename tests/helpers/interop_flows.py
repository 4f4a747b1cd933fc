"""The flow both languages run in the interoperability tests (TypeScript handlers: tests/node)."""

from __future__ import annotations

from typing import Any

from pgflow import Flow, map_step, step


class Interop(Flow, slug="interop"):
    @step
    def seed(self, input: dict[str, int]) -> list[int]:
        return [input["n"], input["n"] + 1]

    @map_step(array=seed)
    def square(self, x: int) -> int:
        return x * x

    @step(depends_on=[square, seed])
    def total(self, deps: dict[str, Any]) -> dict[str, int]:
        return {"sum": sum(deps["square"]), "count": len(deps["seed"])}
