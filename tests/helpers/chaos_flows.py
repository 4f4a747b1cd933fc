"""The flow of the chaos test: a DAG with a map step, each task taking a little while, so that
kills and restarts land while tasks run."""

from __future__ import annotations

import random
import time
from typing import Any

from pgflow import Flow, map_step, step


def pause() -> None:
    time.sleep(random.uniform(0.05, 0.25))  # noqa: S311 - timing jitter, not security


class Chaos(Flow, slug="chaos", base_delay=1, max_attempts=5):
    @step
    def items(self, input: dict[str, int]) -> list[int]:
        pause()
        return list(range(input["n"] % 4 + 2))

    @step
    def label(self, input: dict[str, int]) -> str:
        pause()
        return f"run {input['n']}"

    @map_step(array=items)
    def square(self, item: int) -> int:
        pause()
        return item * item

    @step(depends_on=[square, label])
    def total(self, deps: dict[str, Any]) -> dict[str, Any]:
        pause()
        return {"label": deps["label"], "sum": sum(deps["square"])}


def expected_output(n: int) -> dict[str, Any]:
    return {"total": {"label": f"run {n}", "sum": sum(i * i for i in range(n % 4 + 2))}}
