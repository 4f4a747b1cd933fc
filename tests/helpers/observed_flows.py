"""A flow for the worker observability acceptance tests whose odd runs fail at once."""

from __future__ import annotations

from pgflow import Flow, NonRetryableError, step


class Picky(Flow, slug="picky", max_attempts=5, base_delay=1):
    @step
    def accept(self, input: dict[str, int]) -> int:
        if input["n"] % 2:
            raise NonRetryableError(f"{input['n']} is odd")
        return input["n"]

    @step(depends_on=[accept])
    def double(self, deps: dict[str, int]) -> int:
        return deps["accept"] * 2
