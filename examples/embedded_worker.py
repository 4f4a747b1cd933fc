"""A worker inside an application's own event loop, with a background service of its own
(see docs/workers.md).

    python examples/embedded_worker.py    # uses DATABASE_URL, else a local or embedded server
"""

from __future__ import annotations

from typing import Any

import anyio
import anyio.to_thread
import sqlalchemy as sa

from pgflow import Flow, start_flow_and_wait, step
from pgflow.testing import temporary_database
from pgflow.worker import ServiceContext, Worker, WorkerOptions


class Shout(Flow, slug="shout"):
    @step
    def upper(self, input: str) -> str:
        return input.upper()


class Ticker:
    """A background service: runs while the worker serves, cancelled when it stops."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self, context: ServiceContext) -> None:
        while not context.stopping.is_set():
            self.ticks += 1
            await anyio.sleep(0.1)


async def main() -> None:
    with temporary_database(install_schema=True) as url:
        engine = sa.create_engine(url)
        ticker = Ticker()
        worker = Worker(
            [Shout], engine, options=WorkerOptions(shutdown_timeout=5), compile_missing=True
        )
        worker.add_service(ticker)
        async with anyio.create_task_group() as group:
            await group.start(worker.serve)  # returns once registered and about to claim
            run = await anyio.to_thread.run_sync(start_flow_and_wait, engine, Shout, "hello")
            output: Any = run.output
            print(f"run {run.status}: {output}")
            worker.stop()  # drains in-flight handlers, then serve() returns
        print(f"ticker ran: {ticker.ticks > 0}")
        engine.dispose()


if __name__ == "__main__":
    anyio.run(main)
