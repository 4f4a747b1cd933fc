"""Autogenerate: compare registered flows with the database and plan operations.

Registered on Alembic's global ``comparators`` for the ``"schema"`` target, which every
autogenerate (``alembic revision --autogenerate``, ``alembic check``) runs once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from alembic.autogenerate import comparators
from alembic.autogenerate.api import AutogenContext
from alembic.operations import MigrateOperation
from alembic.operations.ops import UpgradeOps
from alembic.util import PriorityDispatchResult

from alembic_pgflow._diff import FlowDiff, diff_flow
from alembic_pgflow._ops import CreateFlowOp, DropFlowOp, UpdateFlowOptionsOp
from alembic_pgflow._registry import FlowRegistry, Registration, registry_for
from alembic_pgflow._revisions import schema_head
from alembic_pgflow._schedules import plan_schedule_operations, read_schedules
from alembic_pgflow._stored import StoredFlow, read_flows
from alembic_pgflow.errors import FlowShapeChangedError
from pgflow._registered import create_flow_defaults

# Under Alembic's logger so that the default alembic.ini shows these lines next to its own
# "Detected added table ..." ones.
log = logging.getLogger("alembic.autogenerate.pgflow")


@comparators.dispatch_for("schema")
def compare_flows(
    autogen_context: AutogenContext, upgrade_ops: UpgradeOps, schemas: object
) -> PriorityDispatchResult:
    registry = registry_for(autogen_context.migration_context.config)
    connection = autogen_context.connection
    if connection is None or not (registry.flows or registry.drop_removed):
        return PriorityDispatchResult.CONTINUE
    stored = read_flows(connection)
    defaults = create_flow_defaults(connection) if stored else {}
    operations = plan_operations(registry, stored, defaults)
    before, after = plan_schedule_operations(registry, read_schedules(connection), operations)
    operations = [*before, *operations, *after]
    upgrade_ops.ops.extend(operations)
    migration_context = autogen_context.migration_context
    script = migration_context.script
    if (
        operations
        and migration_context.opts.get("process_revision_directives") is None
        and script is not None
        and schema_head(script) is not None
    ):
        log.warning(
            "this revision does not depend on the pgflow schema branch, and may be written "
            "into alembic_pgflow's own directory: pass process_revision_directives="
            "alembic_pgflow.process_revision_directives to context.configure() in env.py"
        )
    return PriorityDispatchResult.CONTINUE


def plan_operations(
    registry: FlowRegistry, stored: Mapping[str, StoredFlow], defaults: Mapping[str, int]
) -> list[MigrateOperation]:
    """Operations that bring ``stored`` to ``registry``; raises when a shape changed unasked."""
    operations: list[MigrateOperation] = []
    blocked: list[tuple[Registration, StoredFlow, FlowDiff]] = []
    for slug, registration in registry.flows.items():
        current = stored.get(slug)
        if current is None:
            log.info("Detected new flow %r", slug)
            operations.append(CreateFlowOp(registration.definition))
            continue
        diff = diff_flow(registration.definition, current, defaults)
        if diff.shape and registration.allow_data_loss:
            log.info("Detected changed shape of flow %r (allow_data_loss: re-create)", slug)
            operations += [
                DropFlowOp(
                    slug,
                    delete_runs=True,
                    definition=current.to_dict(),
                    reason=f"allow_data_loss: flow {slug!r} changed shape; "
                    "re-creating it deletes its runs",
                ),
                CreateFlowOp(registration.definition, delete_runs_on_downgrade=True),
            ]
        elif diff.shape:
            blocked.append((registration, current, diff))
        elif diff.options_changed:
            log.info("Detected changed options of flow %r", slug)
            operations.append(_update(slug, diff))
        elif registration.allow_data_loss:
            log.warning(
                "flow %r is unchanged but allow_data_loss is set for it: remove that from "
                "env.py once its re-creating revision is applied",
                slug,
            )
    if blocked:
        raise FlowShapeChangedError(explain_shape_changes(blocked))
    for slug in sorted(set(stored) - set(registry.flows)):
        if registry.should_drop(slug):
            log.info("Detected removed flow %r (drop_removed: drop)", slug)
            operations.append(
                DropFlowOp(
                    slug,
                    delete_runs=True,
                    definition=stored[slug].to_dict(),
                    reason=f"drop_removed: flow {slug!r} is registered nowhere; "
                    "dropping it deletes its runs",
                )
            )
        else:
            log.warning(
                "flow %r is in the database but not registered with include_flows(); left as "
                "is (drop_removed=True or drop_removed=[%r] would drop it)",
                slug,
                slug,
            )
    return operations


def _update(slug: str, diff: FlowDiff) -> UpdateFlowOptionsOp:
    return UpdateFlowOptionsOp(
        slug,
        flow={name: new for name, (_old, new) in diff.flow.items()},
        steps={
            step: {name: new for name, (_old, new) in options.items()}
            for step, options in diff.steps.items()
        },
        previous_flow={name: old for name, (old, _new) in diff.flow.items()},
        previous_steps={
            step: {name: old for name, (old, _new) in options.items()}
            for step, options in diff.steps.items()
        },
    )


def explain_shape_changes(blocked: list[tuple[Registration, StoredFlow, FlowDiff]]) -> str:
    slugs = [registration.definition.slug for registration, _, _ in blocked]
    lines = [
        f"pgflow: the shape of {len(blocked)} flow(s) changed ({', '.join(slugs)}). A flow's "
        "steps, step types and dependencies cannot change in place: runs in flight use them.",
        "",
    ]
    for registration, current, diff in blocked:
        lines.append(
            f"  flow {current.slug!r} ({registration.origin}); in this database "
            f"{current.describe_runs()}:"
        )
        lines += [f"    - {change}" for change in diff.shape]
    lines += [
        "",
        "Choose one, then run autogenerate again:",
        "  1. Keep the old flow and its runs: give the changed flow a new slug (e.g.",
        f'     slug="{slugs[0]}_v2"). The revision creates the new flow; the old one stays',
        "     until you drop it (include_flows(..., drop_removed=[...]) once its runs are done).",
        "  2. Replace the flow and delete its runs: allow it in env.py,",
        f"       alembic_pgflow.include_flows(..., allow_data_loss={slugs!r})",
        "     and the revision drops and re-creates the flow. Remove the flag once it is applied.",
    ]
    return "\n".join(lines)
