"""compile_flow produces the same text as npm @pgflow/dsl 0.8.1's compileFlow (run with Node)."""

from __future__ import annotations

from typing import Any

import pytest

from pgflow.compiler import compile_flow
from pgflow.definition import FlowDefinition, StepDefinition, StepType
from tests.helpers.node import typescript_compile

S, M = StepType.SINGLE, StepType.MAP


def flow(slug: str, *steps: StepDefinition, **options: int) -> FlowDefinition:
    return FlowDefinition(slug, steps, **options)  # type: ignore[arg-type]


def st(slug: str, *deps: str, step_type: StepType = S, **options: Any) -> StepDefinition:
    return StepDefinition(slug, step_type, deps, **options)


CORPUS = [
    flow("single", st("only")),
    flow("chain", st("a"), st("b", "a"), st("c", "b")),
    flow(
        "fan_out_in",
        st("root"),
        st("left", "root"),
        st("right", "root"),
        st("join", "left", "right"),
    ),
    flow("all_flow_options", st("x"), max_attempts=5, base_delay=2, timeout=30),
    flow("max_attempts_only", st("x"), max_attempts=1),
    flow("base_delay_only", st("x"), base_delay=7),
    flow("timeout_only", st("x"), timeout=3),
    flow("step_max_attempts", st("x", max_attempts=9)),
    flow("step_base_delay", st("x", base_delay=1)),
    flow("step_timeout", st("x", timeout=600)),
    flow("step_start_delay_zero", st("x", start_delay=0)),
    flow("step_start_delay", st("x", start_delay=3600)),
    flow("step_all_options", st("x", max_attempts=2, base_delay=3, timeout=4, start_delay=5)),
    flow(
        "both_levels", st("a", timeout=10), st("b", "a", max_attempts=4), max_attempts=2, timeout=20
    ),
    flow("root_map", st("items", step_type=M)),
    flow("root_map_options", st("items", step_type=M, max_attempts=3, start_delay=1)),
    flow("dependent_map", st("list"), st("each", "list", step_type=M)),
    flow("map_of_map", st("m1", step_type=M), st("m2", "m1", step_type=M), st("sum", "m2")),
    flow(
        "thumbnails",
        st("resize", step_type=M),
        st("upload", "resize", step_type=M, timeout=120),
        st("publish", "upload"),
    ),
    flow(
        "diamond_with_map",
        st("fetch"),
        st("pages", "fetch"),
        st("each_page", "pages", step_type=M, base_delay=5),
        st("meta", "fetch"),
        st("report", "each_page", "meta", "fetch", max_attempts=7),
    ),
    flow("CamelCase_Slug9", st("Step_One"), st("stepTwo2", "Step_One")),
    flow(
        "big_numbers", st("x", timeout=2147483647, start_delay=2147483647), max_attempts=2147483647
    ),
    flow("x" * 128, st("y" * 128)),
    flow("deps_order_kept", st("c"), st("a"), st("b"), st("z", "b", "c", "a")),
    flow(
        "wide",
        *[st(f"s{i}") for i in range(12)],
        st("gather", *[f"s{i}" for i in range(12)]),
    ),
]


@pytest.fixture(scope="module")
def typescript_output() -> list[list[str]]:
    return typescript_compile(CORPUS)


def test_corpus_is_large_and_covers_every_option_and_step_type() -> None:
    assert len(CORPUS) >= 20
    steps = [s for f in CORPUS for s in f.steps]
    for option in ("max_attempts", "base_delay", "timeout", "start_delay"):
        assert any(getattr(s, option) is not None for s in steps), option
    for option in ("max_attempts", "base_delay", "timeout"):
        assert any(getattr(f, option) is not None for f in CORPUS), option
    assert any(s.step_type is M and not s.depends_on for s in steps)
    assert any(s.step_type is M and s.depends_on for s in steps)
    assert any(len(s.depends_on) > 2 for s in steps)


@pytest.mark.parametrize("index", range(len(CORPUS)), ids=[f.slug[:30] for f in CORPUS])
def test_same_sql_text_as_the_typescript_compiler(
    index: int, typescript_output: list[list[str]]
) -> None:
    assert compile_flow(CORPUS[index]) == typescript_output[index]
