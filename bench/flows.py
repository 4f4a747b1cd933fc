"""The flows the pgflow-python benchmarks run (same shapes as the peers' workloads)."""

from __future__ import annotations

from typing import Any

from pgflow import Flow, Job, map_step, step


class Noop(Job, slug="bench_noop"):
    """P1, P5-P7: a no-op single-step job."""

    async def perform(self, input: Any) -> None:
        return None


class Chain(Flow, slug="bench_chain"):
    """P2: three steps in sequence, each given the previous output."""

    @step
    async def first(self, input: dict[str, int]) -> int:
        return input["n"] + 1

    @step(depends_on=[first])
    async def second(self, deps: dict[str, int]) -> int:
        return deps["first"] * 2

    @step(depends_on=[second])
    async def third(self, deps: dict[str, int]) -> int:
        return deps["second"] - 1


class FanOut(Flow, slug="bench_fan_out"):
    """P3: a map over ``elements`` numbers, then one fan-in step over all squares."""

    @step
    async def numbers(self, input: dict[str, int]) -> list[int]:
        return list(range(input["elements"]))

    @map_step(array=numbers)
    async def square(self, x: int) -> int:
        return x * x

    @step(depends_on=[square])
    async def total(self, deps: dict[str, list[int]]) -> int:
        return sum(deps["square"])


class Ping(Job, slug="bench_ping"):
    """P4: one step, started and awaited by the application."""

    async def perform(self, input: Any) -> str:
        return "pong"


ALL: list[type[Flow]] = [Noop, Chain, FanOut, Ping]
