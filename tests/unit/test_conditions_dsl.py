"""Conditions in the DSL, the definition and the compiler (no database)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa

from pgflow import Flow, map_step, step
from pgflow.compiler import compile_flow
from pgflow.definition import FlowDefinition
from pgflow.dsl import definition_of
from pgflow.errors import FlowDefinitionError


class Routed(Flow, slug="routed"):
    @step(if_not={"mode": "it's 100%: off"}, when_unmet="fail")
    def classify(self, input: Any) -> dict[str, str]:
        return {"kind": "big"}

    @step(depends_on=[classify], if_={"classify": {"kind": "big"}}, retries_exhausted="skip")
    def big(self, deps: Any) -> str:
        return "big"

    @map_step(array=classify, if_={"classify": [1]}, when_unmet="skip-cascade")
    def each(self, item: Any) -> Any:
        return item


def test_conditions_are_in_the_definition_and_round_trip() -> None:
    definition = definition_of(Routed)
    big = definition.step("big")
    assert big.condition == {
        "if_": {"classify": {"kind": "big"}},
        "if_not": None,
        "when_unmet": None,
        "retries_exhausted": "skip",
    }
    again = FlowDefinition.from_dict(json.loads(json.dumps(definition.to_dict())))
    assert again == definition
    assert hash(again) == hash(definition)  # definitions are dictionary keys in the client


def test_the_compiler_appends_one_statement_per_conditional_step_that_every_executor_runs() -> None:
    statements = compile_flow(definition_of(Routed))
    assert statements[:4] == [
        "SELECT pgflow.create_flow('routed');",
        "SELECT pgflow.add_step('routed', 'classify');",
        "SELECT pgflow.add_step('routed', 'big', ARRAY['classify']);",
        "SELECT pgflow.add_step('routed', 'each', ARRAY['classify'], step_type => 'map');",
    ]
    assert statements[4] == (
        "SELECT pgflow_python.set_step_condition('routed', 'classify', forbidden_input_pattern"
        " => '{\"mode\": \"it''s 100\\u0025\\u003a off\"}'::jsonb, when_unmet => 'fail');"
    )
    assert statements[5:] == [
        "SELECT pgflow_python.set_step_condition('routed', 'big', required_input_pattern => "
        '\'{"classify": {"kind": "big"}}\'::jsonb, when_exhausted => \'skip\');',
        "SELECT pgflow_python.set_step_condition('routed', 'each', required_input_pattern => "
        "'{\"classify\": [1]}'::jsonb, when_unmet => 'skip-cascade');",
    ]
    for statement in statements:  # no ":name" SQLAlchemy would read as a bind parameter
        assert sa.text(statement).compile().params == {}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"when_unmet": "sometimes", "if_": {"a": 1}}, "when_unmet must be one of 'fail', 'skip'"),
        ({"retries_exhausted": "retry"}, "retries_exhausted must be one of"),
        ({"if_": {1, 2}}, "if_ must be a JSON pattern"),
        ({"if_not": float("nan")}, "if_not must be a JSON pattern"),
        ({"when_unmet": "skip"}, "when_unmet='skip' needs a condition (if_= or if_not=)"),
    ],
)
def test_bad_root_conditions_fail_at_class_definition(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(FlowDefinitionError, match=r"flow 'bad', step 'only': ") as raised:

        class Bad(Flow, slug="bad"):
            @step(**options)
            def only(self, input: Any) -> None: ...

    assert message in str(raised.value)


def test_a_pattern_key_that_is_not_a_dependency_is_refused() -> None:
    with pytest.raises(FlowDefinitionError) as raised:

        class Typo(Flow, slug="typo"):
            @step
            def classify(self, input: Any) -> None: ...

            @step(depends_on=[classify], if_={"clasify": {"kind": "big"}})
            def big(self, deps: Any) -> None: ...

    assert str(raised.value).endswith(
        "flow 'typo', step 'big': if_ names 'clasify', which is not a dependency of this step "
        "(dependencies: classify); no input could match it"
    )


def test_a_dependent_step_pattern_must_be_an_object() -> None:
    with pytest.raises(FlowDefinitionError, match="it must be a dict keyed by dependencies"):

        class Listy(Flow, slug="listy"):
            @step
            def a(self, input: Any) -> None: ...

            @step(depends_on=[a], if_not=["a"])
            def b(self, deps: Any) -> None: ...
