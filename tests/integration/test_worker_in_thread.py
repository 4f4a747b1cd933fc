"""``Worker.run()`` embedded in an application: off the main thread, without signal handlers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
from sqlalchemy.engine import Engine

from pgflow import Flow, step
from pgflow.worker import Worker
from tests.helpers.database import register_flows
from tests.helpers.workers import EventLog, start, wait_until_finished

DOCS = Path(__file__).resolve().parents[2] / "docs" / "workers.md"


class Greeting(Flow, slug="greeting_in_thread"):
    @step
    def greet(self, input: Any) -> str:
        return f"hello {input['name']}"


def _wait_for(condition: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_run_off_the_main_thread_serves_until_stop(pgflow_engine: Engine) -> None:
    engine = pgflow_engine
    register_flows(engine, Greeting)
    events = EventLog()
    try:
        worker = Worker([Greeting], engine)
        thread = threading.Thread(target=worker.run, name="pgflow-worker")
        thread.start()  # serves next to the application, without signal handlers
        _wait_for(lambda: events.named("worker.started") or not thread.is_alive(), "worker.started")
        assert thread.is_alive(), "run() ended at start-up off the main thread"
        run_id = start(engine, Greeting, {"name": "Ada"})
        run = anyio.run(wait_until_finished, engine, run_id)
        assert run == {"status": "completed", "output": {"greet": "hello Ada"}}

        worker.stop()  # from any thread: in-flight handlers drain, then run() returns
        thread.join(timeout=60)
        assert not thread.is_alive(), "stop() did not end run() in its thread"
        names = [name for name, _, _ in events.events if name.startswith("worker.")]
        assert "worker.crashed" not in names
        assert names[-1] == "worker.stopped"
    finally:
        events.close()


def test_the_docs_show_this_idiom_verbatim() -> None:
    snippet = DOCS.read_text().split("thread = threading.Thread(", 1)[1].split("```", 1)[0]
    before, after = ("thread = threading.Thread(" + snippet).split("...\n")
    source = Path(__file__).read_text()
    assert (
        "worker = Worker([Greeting], engine)\n        "
        + before.replace("\n", "\n        ").rstrip()
        in source
    )
    stop_line = after.strip().splitlines()[0]
    assert stop_line.startswith("worker.stop()")
    assert "\n        " + stop_line + "\n" in source
