"""Flow definition -> SQL, text-identical to npm ``@pgflow/dsl`` 0.8.1 ``compileFlow``.

Same text means a flow compiled here or by the TypeScript tooling produces the same migration,
so either side can own a flow. Slugs are validated (letters, digits, underscores), and options
are integers, so nothing here needs quoting beyond the single quotes around slugs.
"""

from __future__ import annotations

from collections.abc import Mapping

from pgflow.definition import FlowDefinition, FlowType, StepType

_OPTION_ORDER = ("max_attempts", "base_delay", "timeout", "start_delay")


def _options_clause(options: Mapping[str, int | None]) -> str:
    parts = [
        f"{name} => {options[name]}" for name in _OPTION_ORDER if options.get(name) is not None
    ]
    return f", {', '.join(parts)}" if parts else ""


def compile_flow(definition: FlowDefinition) -> list[str]:
    """``create_flow`` then one ``add_step`` per step, in declaration order.

    A job gets one more statement (our additive ``flows.flow_type`` column); TypeScript has no
    jobs, so parity with ``compileFlow`` holds for every flow.
    """
    statements = [
        f"SELECT pgflow.create_flow('{definition.slug}'{_options_clause(definition.options)});"
    ]
    for step in definition.steps:
        deps = (
            ", ARRAY[" + ", ".join(f"'{dep}'" for dep in step.depends_on) + "]"
            if step.depends_on
            else ""
        )
        step_type = ", step_type => 'map'" if step.step_type is StepType.MAP else ""
        statements.append(
            f"SELECT pgflow.add_step('{definition.slug}', '{step.slug}'"
            f"{deps}{_options_clause(step.options)}{step_type});"
        )
    if definition.flow_type is FlowType.JOB:
        statements.append(
            f"UPDATE pgflow.flows SET flow_type = 'job' WHERE flow_slug = '{definition.slug}';"
        )
    return statements
