"""@subflow in the DSL, the definition and the compiler (no database)."""

from __future__ import annotations

from typing import Any

import pytest

from pgflow import Flow, step, subflow
from pgflow.compiler import compile_flow
from pgflow.definition import FlowDefinition, StepDefinition, StepType, WaitKind
from pgflow.dsl import definition_of
from pgflow.errors import FlowDefinitionError
from pgflow.testing import call_step


class Payment(Flow, slug="unit_payment"):
    @step
    def charge(self, input: Any) -> Any:
        return input


class Order(Flow, slug="unit_order"):
    @step
    def lines(self, input: Any) -> list[Any]:
        return list(input)

    @subflow(Payment, depends_on=[lines], max_attempts=2, timeout=10)
    def pay(self, deps: Any) -> Any:
        return {"amount": len(deps["lines"])}

    @subflow("unit_payment", array=lines)
    def each(self, line: Any, ctx: Any) -> Any:
        return line

    @step(depends_on=[pay, each])
    def done(self, deps: Any) -> Any:
        return deps


def test_a_subflow_step_is_a_step_of_the_definition_whose_method_is_no_queue_handler() -> None:
    definition = definition_of(Order)
    pay = definition.step("pay")
    each = definition.step("each")
    assert (pay.subflow, pay.step_type, pay.depends_on) == (
        "unit_payment",
        StepType.SINGLE,
        ("lines",),
    )
    assert (pay.max_attempts, pay.timeout) == (2, 10)
    assert (each.subflow, each.step_type, each.depends_on) == (
        "unit_payment",
        StepType.MAP,
        ("lines",),
    )
    assert set(Order.__pgflow_handlers__) == {"lines", "done"}
    assert set(Order.__pgflow_subflows__) == {"pay", "each"}
    assert Order.__pgflow_subflows__["each"].takes_context
    assert FlowDefinition.from_dict(definition.to_dict()) == definition
    # Still callable as a method (tests call it directly).
    assert Order().pay({"lines": [1, 2]}) == {"amount": 2}


def test_the_compiler_marks_subflow_steps_after_add_step() -> None:
    statements = compile_flow(definition_of(Order))
    assert statements[-2:] == [
        "SELECT pgflow_python.set_subflow_step('unit_order', 'pay', 'unit_payment');",
        "SELECT pgflow_python.set_subflow_step('unit_order', 'each', 'unit_payment');",
    ]
    assert "SELECT pgflow.add_step('unit_order', 'each', ARRAY['lines'], step_type => 'map');" in (
        statements
    )


def test_a_flow_that_is_its_own_subflow_is_refused_at_class_definition() -> None:
    with pytest.raises(FlowDefinitionError, match=r"subflow cycle unit_self -> unit_self"):

        class Itself(Flow, slug="unit_self"):
            @subflow("unit_self")
            def again(self, input: Any) -> Any:
                return input


def test_a_cycle_through_another_flow_is_refused_at_class_definition() -> None:
    class First(Flow, slug="unit_cycle_a"):
        @subflow("unit_cycle_b")
        def second(self, input: Any) -> Any:
            return input

    with pytest.raises(FlowDefinitionError, match=r"unit_cycle_b -> unit_cycle_a -> unit_cycle_b"):

        class Second(Flow, slug="unit_cycle_b"):
            @subflow(First)
            def first(self, input: Any) -> Any:
                return input


@pytest.mark.parametrize(
    ("declare", "message"),
    [
        (lambda: subflow(object)(lambda self, i: i), "takes a Flow class or a flow slug"),  # type: ignore[arg-type]
        (lambda: subflow("bad slug")(lambda self, i: i), "invalid"),
        (
            lambda: subflow(Payment, array="a", depends_on=["b"])(lambda self, i: i),
            "takes no depends_on",
        ),
    ],
)
def test_bad_subflow_declarations_are_clear_errors(declare: Any, message: str) -> None:
    def define() -> None:
        method = declare()
        FlowDefinition("unit_bad", (StepDefinition("x"), method.definition()))

    with pytest.raises(FlowDefinitionError, match=message):
        define()


def test_start_delay_and_waiting_make_no_sense_for_a_subflow_step() -> None:
    with pytest.raises(FlowDefinitionError, match="start_delay would mean nothing"):
        FlowDefinition("unit_bad", (StepDefinition("s", subflow="unit_payment", start_delay=1),))
    with pytest.raises(FlowDefinitionError, match="not both"):
        FlowDefinition(
            "unit_bad", (StepDefinition("s", subflow="unit_payment", wait=WaitKind.SIGNAL),)
        )


def test_a_method_with_the_wrong_parameters_is_refused() -> None:
    with pytest.raises(FlowDefinitionError, match=r"must take \(self, input\)"):

        class Wrong(Flow, slug="unit_wrong_sub"):
            @subflow(Payment)
            def pay(self) -> Any: ...


def test_call_step_calls_a_subflow_method_and_returns_the_childs_input() -> None:
    assert call_step(Order, "pay", {"lines": [1, 2, 3]}) == {"amount": 3}
    assert call_step(Order, "each", {"sku": 1}) == {"sku": 1}
