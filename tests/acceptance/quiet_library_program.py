"""An application that embeds a worker and the client: `python quiet_library_program.py URL MODE`.

MODE says how the application configures logging: ``none`` (not at all), ``info`` (the
standard library at INFO, on stdout), ``structlog`` (structlog, JSON lines on stdout).
"""

from __future__ import annotations

import logging
import sys

from pgflow import Flow, step
from pgflow.errors import RunFailedError
from pgflow.testing import run_flow_inline


class Greet(Flow, slug="quiet_greet"):
    @step
    def hello(self, name: str) -> str:
        return f"hello {name}"


class Refuse(Flow, slug="quiet_refuse", max_attempts=1):
    @step
    def check(self, name: str) -> None:
        raise ValueError(f"{name} is not allowed")


def main(url: str, mode: str) -> None:
    if mode == "info":
        logging.basicConfig(
            level=logging.INFO, stream=sys.stdout, format="%(levelname)s %(name)s %(message)s"
        )
    elif mode == "structlog":
        import structlog  # noqa: PLC0415

        structlog.configure(
            processors=[structlog.processors.add_log_level, structlog.processors.JSONRenderer()],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.PrintLoggerFactory(sys.stdout),
        )
    run_flow_inline(Greet, "Ada", url)
    try:
        run_flow_inline(Refuse, "Eve", url)
    except RunFailedError:
        pass
    else:
        raise AssertionError("the run should have failed")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
