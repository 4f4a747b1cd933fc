"""The pure decisions, without a database: flow shapes, the Alembic plan, upstream
classification. Their integration tests run the same code against PostgreSQL; these pin the
rules one case at a time."""

from __future__ import annotations

import pytest

from alembic_pgflow._compare import plan_operations
from alembic_pgflow._ops import CreateFlowOp, DropFlowOp, UpdateFlowOptionsOp
from alembic_pgflow._registry import FlowRegistry, Registration
from alembic_pgflow._stored import StoredFlow, StoredStep
from alembic_pgflow.errors import FlowShapeChangedError
from pgflow._registered import CREATE_FLOW_DEFAULTS
from pgflow._shape import StepShape, shape_changes, shape_of
from pgflow.definition import FlowDefinition, FlowType, StepType
from pgflow.errors import IncompatibleSchemaError
from pgflow.schema import _sources
from pgflow.schema._state import (
    UPSTREAM_081_FUNCTIONS,
    UPSTREAM_081_SIGNATURES,
    DatabaseState,
    Recorded,
    classify_upstream,
)

GREETING = FlowDefinition.from_dict(
    {
        "slug": "greeting",
        "max_attempts": 2,
        "steps": [
            {"slug": "name"},
            {"slug": "greeting", "depends_on": ["name"]},
            {"slug": "card", "depends_on": ["name", "greeting"], "timeout": 30},
        ],
    }
)


def stored(definition: FlowDefinition, **flow_options: int) -> StoredFlow:
    """The flow as the database would hold it after its compiled SQL ran."""
    options = {**CREATE_FLOW_DEFAULTS, **{k: v for k, v in definition.options.items() if v}}
    steps = tuple(
        StoredStep(s.slug, s.step_type, tuple(s.depends_on), dict(s.options))
        for s in definition.steps
    )
    return StoredFlow(definition.slug, FlowType.FLOW, {**options, **flow_options}, steps)


def registry(*definitions: FlowDefinition, allow_data_loss: bool = False) -> FlowRegistry:
    flows = FlowRegistry()
    for definition in definitions:
        flows.add(Registration(definition, "tests", allow_data_loss=allow_data_loss))
    return flows


# Shapes


def test_dependency_order_is_not_a_shape_change() -> None:
    swapped = (*shape_of(GREETING)[:2], StepShape.of("card", "single", ["greeting", "name"]))
    assert shape_changes(swapped, shape_of(GREETING)) == []


def test_shape_changes_are_named_one_per_line() -> None:
    database = (
        StepShape.of("name", StepType.SINGLE, []),
        StepShape.of("old", StepType.SINGLE, []),
        StepShape.of("card", StepType.MAP, ["name"]),
    )
    assert shape_changes(database, shape_of(GREETING)) == [
        "steps added: greeting",
        "steps removed: old",
        "step 'card' type: map -> single",
        "step 'card' dependencies: [name] -> [name, greeting]",
    ]
    reordered = (shape_of(GREETING)[1], shape_of(GREETING)[0], shape_of(GREETING)[2])
    assert shape_changes(reordered, shape_of(GREETING))[0] == (
        "steps reordered: greeting, name, card -> name, greeting, card"
    )


# The Alembic plan


def test_a_new_flow_is_created_and_an_unchanged_one_left_alone() -> None:
    [create] = plan_operations(registry(GREETING), {}, CREATE_FLOW_DEFAULTS)
    assert isinstance(create, CreateFlowOp)
    plan = plan_operations(registry(GREETING), {"greeting": stored(GREETING)}, CREATE_FLOW_DEFAULTS)
    assert plan == []


def test_changed_options_are_updated_in_place() -> None:
    [update] = plan_operations(
        registry(GREETING), {"greeting": stored(GREETING, max_attempts=5)}, CREATE_FLOW_DEFAULTS
    )
    assert isinstance(update, UpdateFlowOptionsOp)
    assert update.flow == {"max_attempts": 2}


def test_a_changed_shape_is_refused_unless_data_loss_is_allowed() -> None:
    before = FlowDefinition.from_dict({"slug": "greeting", "steps": [{"slug": "name"}]})
    with pytest.raises(FlowShapeChangedError, match="steps added: greeting, card"):
        plan_operations(registry(GREETING), {"greeting": stored(before)}, CREATE_FLOW_DEFAULTS)
    drop, create = plan_operations(
        registry(GREETING, allow_data_loss=True),
        {"greeting": stored(before)},
        CREATE_FLOW_DEFAULTS,
    )
    assert isinstance(drop, DropFlowOp)
    assert drop.delete_runs
    assert isinstance(create, CreateFlowOp)


def test_an_unregistered_flow_is_dropped_only_when_asked() -> None:
    database = {"greeting": stored(GREETING)}
    assert plan_operations(FlowRegistry(), database, CREATE_FLOW_DEFAULTS) == []
    [drop] = plan_operations(FlowRegistry(drop_removed=True), database, CREATE_FLOW_DEFAULTS)
    assert isinstance(drop, DropFlowOp)


# Upstream classification


def state(
    *,
    recorded: dict[tuple[str, str], Recorded] | None = None,
    functions: frozenset[str] = frozenset(),
) -> DatabaseState:
    return DatabaseState(
        recorded=recorded or {},
        pgmq_extension_version=None,
        pgmq_tables_present=True,
        pgmq_available_version=None,
        realtime_send_present=True,
        pgflow_schema_present=bool(functions),
        pgflow_functions=functions,
        runtime_signatures=UPSTREAM_081_SIGNATURES if functions else frozenset(),
    )


def test_an_empty_database_gets_every_upstream_migration() -> None:
    plan = classify_upstream(state())
    assert plan.to_apply == tuple(_sources.upstream_migrations())
    assert plan.to_adopt == ()


def test_a_schema_installed_by_other_tooling_is_adopted() -> None:
    plan = classify_upstream(state(functions=UPSTREAM_081_FUNCTIONS))
    assert plan.to_adopt == tuple(_sources.upstream_migrations())
    assert plan.to_apply == ()


def test_a_newer_or_older_foreign_schema_is_refused() -> None:
    with pytest.raises(IncompatibleSchemaError, match="is newer than"):
        classify_upstream(state(functions=UPSTREAM_081_FUNCTIONS | {"from_the_future"}))
    with pytest.raises(IncompatibleSchemaError, match="is older than"):
        classify_upstream(state(functions=UPSTREAM_081_FUNCTIONS - {"start_tasks"}))


def test_recorded_migrations_leave_only_the_rest_pending() -> None:
    first, *rest = _sources.upstream_migrations()
    recorded = {("upstream", first.name): Recorded(first.sha256, "applied")}
    assert classify_upstream(state(recorded=recorded)).to_apply == tuple(rest)
    changed = {("upstream", first.name): Recorded("0" * 64, "applied")}
    with pytest.raises(IncompatibleSchemaError, match="a changed file under an applied name"):
        classify_upstream(state(recorded=changed))
