"""The class-based DSL: what a class declares is exactly the definition pgflow gets."""

from __future__ import annotations

from typing import Any

import pytest

from pgflow.context import Context
from pgflow.definition import FlowType, StepDefinition, StepType
from pgflow.dsl import Flow, Job, definition_of, map_step, step
from pgflow.errors import FlowDefinitionError


class AnalyzeWebsite(Flow, slug="analyze_website", max_attempts=3, base_delay=1, timeout=60):
    @step
    def website(self, input: dict[str, Any], ctx: Context) -> dict[str, Any]:
        return {"html": f"<p>{input['url']}</p>"}

    @step(depends_on=[website])
    async def sentiment(self, deps: dict[str, Any], ctx: Context) -> float:
        return 0.5

    @step(depends_on=[website])
    def summary(self, deps: dict[str, Any]) -> str:
        return "short"

    @step(depends_on=[sentiment, summary], max_attempts=5, start_delay=10)
    def save(self, deps: dict[str, Any], ctx: Context) -> None:
        return None


class Thumbnails(Flow):
    @map_step
    def resize(self, item: str, ctx: Context) -> str:
        return item

    @map_step(array=resize, timeout=30)
    def upload(self, item: str, ctx: Context) -> str:
        return item

    @step(depends_on=[upload])
    def publish(self, deps: dict[str, list[str]], ctx: Context) -> int:
        return len(deps["upload"])


class SendEmail(Job, slug="send_email", max_attempts=5, start_delay=2):
    def perform(self, input: dict[str, str], ctx: Context) -> bool:
        return True


def test_flow_class_becomes_its_definition_in_declaration_order() -> None:
    definition = definition_of(AnalyzeWebsite)
    assert definition.slug == "analyze_website"
    assert definition.flow_type is FlowType.FLOW
    assert definition.options == {"max_attempts": 3, "base_delay": 1, "timeout": 60}
    assert definition.steps == (
        StepDefinition("website"),
        StepDefinition("sentiment", depends_on=("website",)),
        StepDefinition("summary", depends_on=("website",)),
        StepDefinition("save", depends_on=("sentiment", "summary"), max_attempts=5, start_delay=10),
    )


def test_map_steps_and_default_slug_from_class_name() -> None:
    definition = definition_of(Thumbnails)
    assert definition.slug == "thumbnails"
    assert definition.options == {"max_attempts": None, "base_delay": None, "timeout": None}
    assert [(s.slug, s.step_type, s.depends_on) for s in definition.steps] == [
        ("resize", StepType.MAP, ()),
        ("upload", StepType.MAP, ("resize",)),
        ("publish", StepType.SINGLE, ("upload",)),
    ]
    assert definition.step("upload").timeout == 30


@pytest.mark.parametrize(
    ("class_name", "slug"),
    [("HTTPFetcher", "http_fetcher"), ("Nightly2Report", "nightly2_report"), ("ETL", "etl")],
)
def test_default_slugs(class_name: str, slug: str) -> None:
    flow_class = type(class_name, (Flow,), {"only": step(lambda self, input: input)})
    assert definition_of(flow_class).slug == slug


def test_job_is_a_single_step_flow_of_type_job() -> None:
    definition = definition_of(SendEmail)
    assert definition.flow_type is FlowType.JOB
    assert definition.max_attempts == 5
    assert definition.steps == (StepDefinition("perform", start_delay=2),)
    assert SendEmail.__pgflow_handlers__["perform"].takes_context


def test_handlers_know_their_calling_convention() -> None:
    handlers = AnalyzeWebsite.__pgflow_handlers__
    assert handlers["sentiment"].is_async
    assert not handlers["website"].is_async
    assert not handlers["summary"].takes_context
    assert handlers["save"].attribute == "save"


def test_step_methods_stay_callable() -> None:
    assert AnalyzeWebsite().website({"url": "x"}, None) == {"html": "<p>x</p>"}


def test_explicit_step_slug_and_string_dependencies() -> None:
    class Renamed(Flow):
        @step(slug="fetch_page")
        def fetch(self, input: Any) -> Any:
            return input

        @step(depends_on="fetch_page")
        def parse(self, deps: Any) -> Any:
            return deps

        @map_step(array="parse")
        def each(self, item: Any) -> Any:
            return item

    assert definition_of(Renamed).shape == (
        ("fetch_page", StepType.SINGLE, ()),
        ("parse", StepType.SINGLE, ("fetch_page",)),
        ("each", StepType.MAP, ("parse",)),
    )
    assert Renamed.__pgflow_handlers__["fetch_page"].attribute == "fetch"


def test_abstract_bases_share_steps() -> None:
    class Base(Flow, abstract=True):
        @step
        def load(self, input: Any) -> Any:
            return input

    class Concrete(Base, slug="concrete", timeout=9):
        @step(depends_on=[Base.load])
        def store(self, deps: Any) -> Any:
            return deps

    assert [s.slug for s in definition_of(Concrete).steps] == ["load", "store"]
    with pytest.raises(TypeError, match="not a concrete pgflow"):
        definition_of(Base)


def test_errors_name_the_class_and_the_problem() -> None:
    with pytest.raises(
        FlowDefinitionError, match=r"test_dsl\..*Bad: flow 'bad', step 'b' depends on unknown"
    ):

        class Bad(Flow, slug="bad"):
            @step
            def a(self, input: Any) -> Any:
                return input

            @step(depends_on=["missing"])
            def b(self, deps: Any) -> Any:
                return deps


def test_bad_options_fail_at_class_creation() -> None:
    with pytest.raises(FlowDefinitionError, match="max_attempts must be at least 1"):

        class Bad(Flow, max_attempts=0):
            @step
            def a(self, input: Any) -> Any:
                return input


def test_step_options_below_the_typescript_dsl_minimums_fail() -> None:
    with pytest.raises(FlowDefinitionError, match=r"step 'a': timeout must be at least 3 .*got 2"):

        class ShortTimeout(Flow):
            @step(timeout=2)
            def a(self, input: Any) -> Any:
                return input

    with pytest.raises(FlowDefinitionError, match=r"flow 'b': base_delay must be at least 1"):

        class NoDelay(Flow, slug="b", base_delay=0):
            @step
            def a(self, input: Any) -> Any:
                return input


def test_handler_signature_is_checked() -> None:
    with pytest.raises(
        FlowDefinitionError, match=r"must take \(self, input\) or \(self, input, ctx\)"
    ):

        class Bad(Flow):
            @step
            def a(self) -> None:
                return None


def test_map_step_needs_an_array_source_not_a_list_of_deps() -> None:
    with pytest.raises(FlowDefinitionError, match="has no steps"):

        class Empty(Flow):
            pass


def test_job_without_perform() -> None:
    with pytest.raises(FlowDefinitionError, match="must define perform"):

        class NoPerform(Job):
            pass


def test_a_job_refuses_step_methods_it_would_never_run() -> None:
    with pytest.raises(FlowDefinitionError, match=r"has one step, perform\(\).*\(notify\)"):

        class Notifying(Job):
            def perform(self, input: Any) -> None: ...

            @step
            def notify(self, input: Any) -> None: ...


def test_definition_of_rejects_other_objects() -> None:
    with pytest.raises(TypeError):
        definition_of(int)  # type: ignore[arg-type]
    assert definition_of(definition_of(Thumbnails)) is definition_of(Thumbnails)


def test_a_misspelled_option_is_a_type_error_naming_it() -> None:
    with pytest.raises(TypeError, match="step\\(\\) got unexpected keyword argument 'max_attempt'"):
        step(max_attempt=3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="unexpected keyword argument 'start_delay'"):

        class Misspelled(Flow, start_delay=3):  # type: ignore[call-arg]
            @step
            def only(self, input: object) -> object:
                return input
