"""The Alembic plugin's pure parts: flow discovery, the diff rules, the revision layout.

No database here; the integration tests next to it drive the same code through Alembic.
"""

from __future__ import annotations

import ast
import sys
import textwrap
from types import ModuleType

import pytest

from alembic_pgflow import FlowRegistry, include_flows
from alembic_pgflow import _registry as registry_module
from alembic_pgflow._diff import diff_flow
from alembic_pgflow._render import literal
from alembic_pgflow._stored import StoredFlow, StoredStep
from alembic_pgflow.errors import FlowDiscoveryError
from pgflow._registered import CREATE_FLOW_DEFAULTS
from pgflow.definition import STEP_OPTIONS, FlowDefinition, FlowType, StepDefinition, StepType

FLOWS = """\
from pgflow.definition import FlowDefinition, StepDefinition
from pgflow.dsl import Flow, Job, step
from {other} import Borrowed


class Base(Flow, abstract=True):
    @step
    def first(self, input):
        return input


class Report(Base, slug="report"):
    @step(depends_on=["first"])
    def render(self, deps):
        return deps


class Cleanup(Job, slug="cleanup"):
    def perform(self, input):
        return None


NIGHTLY = FlowDefinition("nightly", (StepDefinition("collect"),))
"""


def make_module(monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> ModuleType:
    module = ModuleType(name)
    monkeypatch.setitem(sys.modules, name, module)
    exec(textwrap.dedent(source), module.__dict__)  # noqa: S102 -- test fixtures' own source
    return module


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> FlowRegistry:
    """The process-wide registry include_flows fills outside an Alembic command, emptied."""
    fresh = FlowRegistry()
    monkeypatch.setattr(registry_module, "_process_registry", fresh)
    return fresh


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    make_module(
        monkeypatch,
        "other_app",
        """\
        from pgflow.dsl import Flow, step

        class Borrowed(Flow, slug="borrowed"):
            @step
            def only(self, input):
                return input
        """,
    )
    make_module(monkeypatch, "app", "")
    return make_module(monkeypatch, "app.flows", FLOWS.format(other="other_app"))


def test_a_module_contributes_its_own_concrete_flows_and_definitions(
    registry: FlowRegistry, app: ModuleType
) -> None:
    assert include_flows("app.flows") is registry
    assert list(registry.flows) == ["report", "cleanup", "nightly"]  # not Base, not Borrowed
    assert registry.flows["report"].origin == "app.flows.Report"
    assert registry.flows["cleanup"].definition.flow_type is FlowType.JOB
    assert registry.flows["nightly"].origin == "app.flows.NIGHTLY"


def test_a_package_may_re_export_flows_from_its_submodules(
    registry: FlowRegistry, app: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_module(monkeypatch, "app", "from app.flows import Report, NIGHTLY")
    include_flows("app")
    assert list(registry.flows) == ["report", "nightly"]


def test_classes_definitions_and_references_are_accepted(
    registry: FlowRegistry, app: ModuleType
) -> None:
    adhoc = FlowDefinition("adhoc", (StepDefinition("only"),))
    include_flows(app.Report, adhoc, "app.flows:Cleanup", "other_app:Borrowed")
    assert list(registry.flows) == ["report", "adhoc", "cleanup", "borrowed"]


def test_discovery_errors_say_what_to_fix(
    registry: FlowRegistry, app: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_module(monkeypatch, "empty_app", "import os")
    with pytest.raises(FlowDiscoveryError, match="'empty_app' defines no concrete Flow or Job"):
        include_flows("empty_app")
    with pytest.raises(FlowDiscoveryError, match="cannot import 'no_such_module_here'"):
        include_flows("no_such_module_here")
    with pytest.raises(FlowDiscoveryError, match=r"'app\.flows' has no attribute 'Missing'"):
        include_flows("app.flows:Missing")
    with pytest.raises(FlowDiscoveryError, match="not a concrete pgflow Flow or Job class"):
        include_flows(app.Base)
    with pytest.raises(FlowDiscoveryError, match=r"does not register: \['reprot'\]"):
        include_flows("app.flows", allow_data_loss=["reprot"])
    with pytest.raises(FlowDiscoveryError, match="not the string 'report'"):
        include_flows("app.flows", drop_removed="report")


def test_one_slug_for_two_different_flows_is_refused(
    registry: FlowRegistry, app: ModuleType
) -> None:
    include_flows("app.flows")
    include_flows(app.Report, allow_data_loss=True)  # the same flow again: merged, flag kept
    assert registry.flows["report"].allow_data_loss
    assert not registry.flows["cleanup"].allow_data_loss
    with pytest.raises(FlowDiscoveryError, match="two different flows use the slug 'report'"):
        include_flows(FlowDefinition("report", (StepDefinition("other"),)))


def test_drop_removed_accumulates_slugs_until_true(registry: FlowRegistry, app: ModuleType) -> None:
    include_flows("app.flows", drop_removed=["old_one"])
    include_flows("app.flows", drop_removed=["old_two"])
    assert registry.should_drop("old_two")
    assert not registry.should_drop("other")
    include_flows("app.flows", drop_removed=True)
    assert registry.should_drop("other")


def stored() -> StoredFlow:
    """Flow ``report`` as create_flow/add_step left it; the deps table kept c's deps as b, a."""
    inherit = dict.fromkeys(STEP_OPTIONS)
    return StoredFlow(
        slug="report",
        flow_type=FlowType.FLOW,
        options=CREATE_FLOW_DEFAULTS,
        steps=(
            StoredStep("a", StepType.SINGLE, (), inherit),
            StoredStep("b", StepType.SINGLE, (), inherit),
            StoredStep("c", StepType.SINGLE, ("b", "a"), inherit),
        ),
    )


def test_omitted_options_equal_create_flow_defaults_and_dependency_order_is_free() -> None:
    definition = FlowDefinition(
        "report",
        (StepDefinition("a"), StepDefinition("b"), StepDefinition("c", depends_on=("a", "b"))),
    )
    diff = diff_flow(definition, stored(), CREATE_FLOW_DEFAULTS)
    assert not diff.shape
    assert not diff.options_changed

    explicit = FlowDefinition("report", definition.steps, max_attempts=3, timeout=30)
    diff = diff_flow(explicit, stored(), CREATE_FLOW_DEFAULTS)
    assert dict(diff.flow) == {"timeout": (60, 30)}


def test_literal_keeps_what_fits_on_a_line_and_stays_python() -> None:
    data = {
        "slug": "wide",
        "steps": [
            {"slug": "s" * 30},
            {"slug": "fan_in", "depends_on": [f"input_number_{i}" for i in range(6)]},
        ],
        "quote": 'say "hi" \\ bye',
    }
    text = literal(data, 1, expand=2)
    assert ast.literal_eval(text) == data
    assert f'        {{"slug": "{"s" * 30}"}},\n' in text  # fits: one line
    assert '                "depends_on": [\n                    "input_number_0",\n' in text
    assert max(len(line) for line in text.splitlines()) <= 84
