"""start_flow/enqueue with a class compare it with the stored flow at the process's first start
of that flow: another shape is refused with the worker's message, other options are a warning."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import enqueue, start_flow, telemetry
from pgflow.dsl import Flow, Job, definition_of, step
from pgflow.errors import FlowNotReadyError
from pgflow.worker._startup import check_flows
from tests.helpers.client_flows import Greeting, Reminder


class GreetingWithAnotherShape(Flow, slug="greeting"):
    @step
    def name(self, input: Any) -> str:
        return "x"

    @step(depends_on=[name])
    def greeting(self, deps: Any) -> str:
        return "y"

    @step(depends_on=[greeting])
    def shout(self, deps: Any) -> str:
        return "Y"


class GreetingWithOtherOptions(Flow, slug="greeting", max_attempts=7):
    @step
    def name(self, input: Any) -> str:
        return "x"

    @step(depends_on=[name], timeout=30)
    def greeting(self, deps: Any) -> str:
        return "y"


class ReminderAsAFlow(Job, slug="greeting"):
    def perform(self, input: Any) -> None:
        return None


def _runs(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(sa.text("SELECT count(*) FROM pgflow.runs")).scalar_one())


@pytest.fixture
def events() -> Iterator[list[tuple[str, dict[str, Any]]]]:
    seen: list[tuple[str, dict[str, Any]]] = []
    unsubscribe = telemetry.subscribe(lambda event, fields: seen.append((event, fields)))
    yield seen
    unsubscribe()


def _worker_message(engine: Engine, flow: type[Flow]) -> str:
    with pytest.raises(FlowNotReadyError) as refused:
        check_flows(engine, [definition_of(flow)], compile_missing=False)
    return str(refused.value)


def test_a_class_with_another_shape_is_refused_with_the_workers_message(engine: Engine) -> None:
    with pytest.raises(FlowNotReadyError) as refused:
        start_flow(engine, GreetingWithAnotherShape, {"name": "ada"})
    assert str(refused.value) == _worker_message(engine, GreetingWithAnotherShape)
    assert "steps added: shout" in str(refused.value)
    assert _runs(engine) == 0
    # Refusals are not remembered: the next start checks (and refuses) again.
    with pytest.raises(FlowNotReadyError):
        start_flow(engine, GreetingWithAnotherShape, {"name": "ada"})
    # The slug alone is not checked (the caller named no class), nor is the right class.
    start_flow(engine, "greeting", {"name": "ada"})
    start_flow(engine, Greeting, {"name": "ada"})
    assert _runs(engine) == 2


def test_enqueue_refuses_a_job_class_whose_shape_differs(engine: Engine) -> None:
    with pytest.raises(FlowNotReadyError, match="'greeting' in the database has another shape"):
        enqueue(engine, ReminderAsAFlow, {})
    enqueue(engine, Reminder, {"to": "ops"})
    assert _runs(engine) == 1


def test_the_check_runs_once_per_process_per_flow(engine: Engine) -> None:
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    for _ in range(3):
        start_flow(engine, Greeting, {"name": "ada"})
    checks = [s for s in statements if "FROM pgflow.flows f" in s and "pgflow.steps s" in s]
    assert len(checks) == 1
    assert _runs(engine) == 3


def test_other_options_start_the_run_and_warn_once(
    engine: Engine, events: list[tuple[str, dict[str, Any]]]
) -> None:
    start_flow(engine, GreetingWithOtherOptions, {"name": "ada"})
    start_flow(engine, GreetingWithOtherOptions, {"name": "ada"})
    assert _runs(engine) == 2
    differ = [fields for event, fields in events if event == "flow.options_differ"]
    assert differ == [
        {
            "flow": "greeting",
            "differences": [
                "max_attempts: database 3, class 7",
                "step 'greeting' timeout: database None, class 30",
            ],
            "checked_by": "client",
        }
    ]
    check_flows(engine, [definition_of(GreetingWithOtherOptions)], compile_missing=False)
    assert [f["checked_by"] for e, f in events if e == "flow.options_differ"] == [
        "client",
        "worker",
    ]


def test_a_flow_served_as_a_job_is_an_options_difference(
    engine: Engine, events: list[tuple[str, dict[str, Any]]]
) -> None:
    class ReminderAsAFlowClass(Flow, slug="reminder"):
        @step
        def perform(self, input: Any) -> None:
            return None

    start_flow(engine, ReminderAsAFlowClass, {})
    [fields] = [f for e, f in events if e == "flow.options_differ"]
    assert fields["differences"] == ["type: database job, class flow"]
