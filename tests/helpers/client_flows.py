"""Helpers for the client tests (no tests here): flows, and a raw-SQL task driver.

The driver works a flow's queue in a background thread with upstream's functions only (pgmq.read
-> pgflow.start_tasks -> complete_task/fail_task, as examples/sql_only_flow.py does), so the
client is tested against real runs without depending on the worker.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

import sql_only_flow
from pgflow.context import Context
from pgflow.dsl import Flow, Job, definition_of, map_step, step

# The flows' methods are what a worker would run; the driver runs these raw-protocol handlers,
# which get upstream 0.8.1's task input: a root step {"run": input}, a dependent
# {"run": ..., dep: output}, a map task its element. Raising fails the attempt.
Handler = Callable[[Any], Any]


class Greeting(Flow, slug="greeting"):
    @step
    def name(self, input: dict[str, str], ctx: Context) -> str:
        return input["name"].strip().title()

    @step(depends_on=[name])
    def greeting(self, deps: dict[str, str], ctx: Context) -> str:
        return f"Hello, {deps['name']}!"


GREETING_HANDLERS: dict[str, Handler] = {
    "name": lambda task: task["run"]["name"].strip().title(),
    "greeting": lambda task: f"Hello, {task['name']}!",
}


class Falsy(Flow, slug="falsy"):
    """Four leaf steps whose outputs are JSON's falsy values."""

    @step
    def zero(self, input: None, ctx: Context) -> int:
        return 0

    @step
    def no(self, input: None, ctx: Context) -> bool:
        return False

    @step
    def empty(self, input: None, ctx: Context) -> str:
        return ""

    @step
    def nothing(self, input: None, ctx: Context) -> None:
        return None


FALSY_HANDLERS: dict[str, Handler] = {
    "zero": lambda _task: 0,
    "no": lambda _task: False,
    "empty": lambda _task: "",
    "nothing": lambda _task: None,
}


class Fragile(Flow, slug="fragile", max_attempts=2, base_delay=1):
    @step
    def explode(self, input: int, ctx: Context) -> None:
        raise ValueError(f"cannot handle {input}")


def explode(task: Any) -> Any:
    raise ValueError(f"cannot handle {task['run']}")


class Squares(Flow, slug="squares"):
    @map_step
    def square(self, item: int, ctx: Context) -> int:
        return item * item

    @step(depends_on=[square])
    def total(self, deps: dict[str, list[int]], ctx: Context) -> int:
        return sum(deps["square"])


SQUARES_HANDLERS: dict[str, Handler] = {
    "square": lambda item: item * item,
    "total": lambda task: sum(task["square"]),
}


class Producer(Flow, slug="producer"):
    """A single step feeding a map step: its output must be an array."""

    @step
    def items(self, input: Any, ctx: Context) -> Any:
        return input

    @map_step(array=items)
    def each(self, item: Any, ctx: Context) -> Any:
        return item


class Reminder(Job, slug="reminder"):
    def perform(self, input: dict[str, str], ctx: Context) -> str:
        return f"reminded {input['to']}"


ALL_FLOWS: tuple[type[Flow], ...] = (Greeting, Falsy, Fragile, Squares, Producer, Reminder)


def async_url(url: URL) -> URL:
    return url.set(drivername="postgresql+psycopg")


def query_one(engine: Engine, statement: str, **params: Any) -> Any:
    with engine.begin() as connection:
        return connection.execute(sa.text(statement), params).scalar()


def queue_length(engine: Engine, queue: str) -> int:
    """Messages in the queue, visible or not (pgmq.metrics counts both)."""
    return int(query_one(engine, "SELECT queue_length FROM pgmq.metrics(:q)", q=queue))


def run_count(engine: Engine) -> int:
    return int(query_one(engine, "SELECT count(*) FROM pgflow.runs"))


def waiter_is_waiting(engine: Engine) -> bool:
    """A client waiter is idle after checking the run's status, or after starting the run on its
    listening connection (start_flow_and_wait checks nothing before the first NOTIFY), i.e.
    waiting for a NOTIFY."""
    return bool(
        query_one(
            engine,
            "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND state = 'idle'"
            " AND (query LIKE '%A run''s status alone%' OR query LIKE '%Start a run unless%'))",
        )
    )


@contextmanager
def driving(
    engine: Engine,
    flow: type[Flow],
    handlers: Mapping[str, Handler],
    *,
    gate: Callable[[], bool] | None = None,
) -> Iterator[None]:
    """Work ``flow``'s queue in a background thread for the duration of the block.

    With ``gate``, no task is claimed before ``gate()`` is true (e.g. until a waiter waits).
    """
    slug = definition_of(flow).slug
    stop = threading.Event()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            if gate is not None:
                while not gate():
                    if stop.wait(0.02):
                        return
            _work_queue(engine, slug, handlers, stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=work, name=f"driver-{slug}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive(), "the task driver did not stop"
    if errors:
        raise errors[0]


def _work_queue(
    engine: Engine, slug: str, handlers: Mapping[str, Handler], stop: threading.Event
) -> None:
    worker_id = sql_only_flow.register_worker(engine, slug, "client_tests")
    while not stop.is_set():
        if not sql_only_flow.work_once(engine, slug, handlers, worker_id, visibility=30):
            stop.wait(0.02)
