"""Validation of flow definitions: every rule, with the message a user sees."""

from __future__ import annotations

import re
from typing import Any

import pytest

from pgflow.definition import FlowDefinition, FlowType, StepDefinition, StepType
from pgflow.errors import FlowDefinitionError


def flow(*steps: StepDefinition, slug: str = "f", **options: Any) -> FlowDefinition:
    return FlowDefinition(slug, steps, **options)


def st(slug: str, *deps: str, **kw: Any) -> StepDefinition:
    return StepDefinition(slug, depends_on=deps, **kw)


@pytest.mark.parametrize(
    ("slug", "message"),
    [
        ("", "non-empty string"),
        ("1abc", "starting with a letter"),
        ("_private", "starting with a letter"),
        ("has space", "letters, digits and underscores"),
        ("kebab-case", "letters, digits and underscores"),
        ("a/b", "letters, digits and underscores"),
        ("ünïcode", "letters, digits and underscores"),
        ("run", "reserved"),
        ("x" * 129, "at most 128"),
    ],
)
def test_invalid_flow_slugs(slug: str, message: str) -> None:
    with pytest.raises(FlowDefinitionError, match=message):
        flow(st("a"), slug=slug)


def test_invalid_step_slug_names_the_flow() -> None:
    with pytest.raises(FlowDefinitionError, match=r"flow 'f': step slug 'run' is reserved"):
        flow(st("run"))


def test_valid_edge_slugs() -> None:
    assert flow(st("y" * 128), slug="A" + "_9" * 63).slug.startswith("A_9")


def test_duplicate_steps() -> None:
    with pytest.raises(FlowDefinitionError, match="defines step 'a' twice"):
        flow(st("a"), st("a"))


def test_unknown_dependency_lists_known_steps() -> None:
    with pytest.raises(
        FlowDefinitionError, match=r"depends on unknown step 'nope' \(steps: a, b\)"
    ):
        flow(st("a"), st("b", "nope"))


def test_forward_dependency() -> None:
    with pytest.raises(FlowDefinitionError, match="'b', which is declared after it"):
        flow(st("a", "b"), st("b"))


def test_cycle_is_reported_as_a_path() -> None:
    with pytest.raises(FlowDefinitionError, match=r"dependency cycle: a -> c -> b -> a"):
        flow(st("a", "c"), st("b", "a"), st("c", "b"))


def test_self_dependency_is_a_cycle() -> None:
    with pytest.raises(FlowDefinitionError, match=r"cycle: a -> a"):
        flow(st("a", "a"))


def test_dependency_listed_twice() -> None:
    with pytest.raises(FlowDefinitionError, match="lists a dependency twice"):
        flow(st("a"), st("b", "a", "a"))


def test_map_step_with_two_dependencies() -> None:
    with pytest.raises(FlowDefinitionError, match="map step with 2 dependencies"):
        flow(st("a"), st("b"), st("m", "a", "b", step_type=StepType.MAP))


def test_flow_without_steps() -> None:
    with pytest.raises(FlowDefinitionError, match="has no steps"):
        flow()


def test_job_must_have_one_step() -> None:
    with pytest.raises(FlowDefinitionError, match="exactly one step"):
        flow(st("a"), st("b"), flow_type=FlowType.JOB)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("max_attempts", 0, "must be at least 1 (tries in total, including the first;"),
        ("base_delay", 0, "must be at least 1 (seconds; retry n waits base_delay"),
        ("timeout", 2, "must be at least 3 (seconds a task may run;"),
        ("timeout", 2**31, "must be at most 2147483647"),
        ("max_attempts", 2.5, "must be an integer"),
        ("base_delay", True, "must be an integer"),
        ("timeout", "60", "must be an integer"),
    ],
)
def test_flow_option_ranges(option: str, value: Any, message: str) -> None:
    with pytest.raises(FlowDefinitionError, match=f"flow 'f': {re.escape(option + ' ' + message)}"):
        flow(st("a"), **{option: value})


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_attempts", 0), ("base_delay", 0), ("timeout", 2), ("start_delay", -1)],
)
def test_step_option_minimums_are_the_typescript_dsls(option: str, value: int) -> None:
    with pytest.raises(FlowDefinitionError, match=f"flow 'f', step 'a': {option} must be at least"):
        flow(st("a", **{option: value}))


def test_the_smallest_options_typescript_accepts_are_accepted() -> None:
    smallest: dict[str, Any] = {"max_attempts": 1, "base_delay": 1, "timeout": 3}
    definition = flow(st("a", start_delay=0, **smallest), **smallest)
    assert definition.options == smallest
    assert definition.steps[0].options == {**smallest, "start_delay": 0}


def test_omitted_options_stay_omitted() -> None:
    definition = flow(st("a"))
    assert definition.options == {"max_attempts": None, "base_delay": None, "timeout": None}
    assert definition.steps[0].options == {
        "max_attempts": None,
        "base_delay": None,
        "timeout": None,
        "start_delay": None,
    }
    assert definition.to_dict() == {"slug": "f", "steps": [{"slug": "a"}]}


def test_dict_round_trip_keeps_order_types_and_options() -> None:
    definition = flow(
        st("list", timeout=5),
        st("each", "list", step_type=StepType.MAP, start_delay=0),
        st("z"),
        st("sum", "each", "z", max_attempts=2),
        slug="report",
        base_delay=1,
        flow_type=FlowType.FLOW,
    )
    data = definition.to_dict()
    assert FlowDefinition.from_dict(data) == definition
    assert [s["slug"] for s in data["steps"]] == ["list", "each", "z", "sum"]
    assert data["steps"][1] == {
        "slug": "each",
        "step_type": "map",
        "depends_on": ["list"],
        "start_delay": 0,
    }


def test_from_dict_rejects_unknown_keys() -> None:
    with pytest.raises(FlowDefinitionError, match="unknown flow keys"):
        FlowDefinition.from_dict({"slug": "f", "steps": [{"slug": "a"}], "retries": 3})
    with pytest.raises(FlowDefinitionError, match="step 'a': unknown keys"):
        FlowDefinition.from_dict({"slug": "f", "steps": [{"slug": "a", "deps": []}]})


def test_shape_ignores_options_but_not_structure() -> None:
    base = flow(st("a"), st("b", "a"))
    assert flow(st("a", timeout=9), st("b", "a"), max_attempts=9).shape == base.shape
    assert flow(st("a"), st("b")).shape != base.shape
    assert flow(st("a"), st("b", "a", step_type=StepType.MAP)).shape != base.shape


def test_definitions_are_immutable() -> None:
    definition = flow(st("a"))
    with pytest.raises(AttributeError):
        definition.slug = "g"  # type: ignore[misc]
