"""Flows served by worker subprocesses in the acceptance tests."""

from __future__ import annotations

import os
import time
from typing import Any

from pgflow import Context, Flow, map_step, step


class TenSteps(Flow, slug="ten_steps", base_delay=1):
    @step
    def s1(self, input: dict[str, int]) -> int:
        return input["n"]

    @step(depends_on=[s1])
    def s2(self, deps: dict[str, int]) -> int:
        return deps["s1"] + 1

    @step(depends_on=[s2])
    def items(self, deps: dict[str, int]) -> list[int]:
        return [deps["s2"], deps["s2"] * 2, deps["s2"] * 3]

    @map_step(array=items)
    async def each(self, item: int, ctx: Context) -> dict[str, Any]:
        return {"value": item * 10, "pid": os.getpid()}

    @step(depends_on=[each])
    def total(self, deps: dict[str, list[dict[str, int]]]) -> int:
        return sum(d["value"] for d in deps["each"])

    @step(depends_on=[total])
    def a(self, deps: dict[str, int]) -> int:
        return deps["total"] + 1

    @step(depends_on=[total])
    def b(self, deps: dict[str, int]) -> int:
        return deps["total"] + 2

    @step(depends_on=[total])
    def c(self, deps: dict[str, int]) -> int:
        return deps["total"] + 3

    @step(depends_on=[a, b, c])
    def join(self, deps: dict[str, int]) -> int:
        return deps["a"] + deps["b"] + deps["c"]

    @step(depends_on=[join, s1])
    def s10(self, deps: dict[str, int]) -> dict[str, int]:
        return {"n": deps["s1"], "result": deps["join"]}


class SlowStep(Flow, slug="slow_step", timeout=30, max_attempts=3, base_delay=1):
    @step
    def sleepy(self, input: dict[str, float]) -> int:
        time.sleep(input["seconds"])
        return os.getpid()
