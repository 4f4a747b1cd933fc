"""@wait_step and run_timeout in the DSL, the definition and the compiler (no database)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from pgflow import Flow, Job, map_step, step, wait_step
from pgflow.compiler import compile_flow
from pgflow.definition import FlowDefinition, OnTimeout, StepDefinition, StepType, WaitKind
from pgflow.dsl import definition_of
from pgflow.errors import FlowDefinitionError


class Approval(Flow, slug="approval", run_timeout=timedelta(hours=2)):
    @step
    def draft(self, input: Any) -> Any:
        return input

    @wait_step(depends_on=[draft], timeout=timedelta(days=3), on_timeout="skip")
    def approve(self) -> None: ...

    @step(depends_on=[draft, approve])
    def send(self, deps: Any) -> Any:
        return deps


def test_a_wait_step_has_no_handler_and_is_a_single_step_of_the_definition() -> None:
    definition = definition_of(Approval)
    approve = definition.step("approve")
    assert approve.wait is WaitKind.SIGNAL
    assert approve.wait_timeout == 3 * 24 * 3600
    assert approve.on_timeout is OnTimeout.SKIP
    assert approve.options == dict.fromkeys(approve.options)  # no upstream options
    assert definition.run_timeout == 7200
    assert set(Approval.__pgflow_handlers__) == {"draft", "send"}
    assert FlowDefinition.from_dict(definition.to_dict()) == definition


def test_the_compiler_adds_our_statements_after_upstreams() -> None:
    assert compile_flow(definition_of(Approval)) == [
        "SELECT pgflow.create_flow('approval');",
        "SELECT pgflow.add_step('approval', 'draft');",
        "SELECT pgflow.add_step('approval', 'approve', ARRAY['draft']);",
        "SELECT pgflow.add_step('approval', 'send', ARRAY['draft', 'approve']);",
        "SELECT pgflow_python.set_wait_step('approval', 'approve', timeout_seconds => 259200, "
        "on_timeout => 'skip');",
        "SELECT pgflow_python.set_flow_run_timeout('approval', 7200);",
    ]


def test_a_bare_wait_step_waits_for_ever_and_fails_on_no_timeout() -> None:
    class Webhook(Flow, slug="webhook"):
        @wait_step
        def reply(self) -> None: ...

    reply = definition_of(Webhook).step("reply")
    assert (reply.wait_timeout, reply.on_timeout) == (None, OnTimeout.FAIL)
    assert compile_flow(definition_of(Webhook))[-1] == (
        "SELECT pgflow_python.set_wait_step('webhook', 'reply', timeout_seconds => NULL, "
        "on_timeout => 'fail');"
    )


def test_timeouts_are_rounded_up_to_whole_seconds() -> None:
    class Quick(Flow, slug="quick", run_timeout=0.2):
        @wait_step(timeout=timedelta(milliseconds=1500))
        def reply(self) -> None: ...

    assert definition_of(Quick).step("reply").wait_timeout == 2
    assert definition_of(Quick).run_timeout == 1


@pytest.mark.parametrize("bad", [0, -1, timedelta(0), timedelta(seconds=-5), float("inf"), "3"])
def test_zero_negative_or_odd_wait_timeouts_are_refused(bad: Any) -> None:
    with pytest.raises(FlowDefinitionError, match="timeout"):
        wait_step(timeout=bad)


@pytest.mark.parametrize("bad", [0, -3, timedelta(0), "1h"])
def test_zero_negative_or_odd_run_timeouts_are_refused_at_class_definition(bad: Any) -> None:
    with pytest.raises(FlowDefinitionError, match="run_timeout"):

        class Bad(Flow, slug="bad", run_timeout=bad):
            @step
            def only(self, input: Any) -> Any: ...

    with pytest.raises(FlowDefinitionError, match="run_timeout"):

        class BadJob(Job, slug="bad_job", run_timeout=bad):
            def perform(self, input: Any) -> Any: ...


def test_an_unknown_on_timeout_is_refused() -> None:
    with pytest.raises(FlowDefinitionError, match="'fail' or 'skip'"):
        wait_step(on_timeout="retry")  # type: ignore[call-overload]


def test_definitions_from_data_are_checked_too() -> None:
    with pytest.raises(FlowDefinitionError, match="map step"):
        FlowDefinition("f", (StepDefinition("w", StepType.MAP, wait=WaitKind.SIGNAL),))
    with pytest.raises(FlowDefinitionError, match="max_attempts would mean nothing"):
        FlowDefinition("f", (StepDefinition("w", wait=WaitKind.SIGNAL, max_attempts=3),))
    with pytest.raises(FlowDefinitionError, match="for wait steps"):
        FlowDefinition("f", (StepDefinition("w", on_timeout=OnTimeout.SKIP),))
    with pytest.raises(FlowDefinitionError, match="must be one of 'signal'"):
        StepDefinition("w", wait="email")  # type: ignore[arg-type]
    with pytest.raises(FlowDefinitionError, match="wait_timeout must be between"):
        FlowDefinition("f", (StepDefinition("w", wait=WaitKind.SIGNAL, wait_timeout=0),))


def test_a_map_step_still_takes_its_array_from_a_wait_step() -> None:
    class Batch(Flow, slug="batch"):
        @wait_step
        def items(self) -> None: ...

        @map_step(array=items)
        def each(self, item: Any) -> Any:
            return item

    assert definition_of(Batch).step("each").depends_on == ("items",)
