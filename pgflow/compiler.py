"""Flow definition -> SQL, text-identical to npm ``@pgflow/dsl`` 0.8.1 ``compileFlow``.

Same text means a flow compiled here or by the TypeScript tooling produces the same migration,
so either side can own a flow. Slugs are validated (letters, digits, underscores), and options
are integers, so nothing here needs quoting beyond the single quotes around slugs, except the
JSON patterns of conditions (``sql_json``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from pgflow.definition import FlowDefinition, FlowType, OnTimeout, StepDefinition, StepType
from pgflow.flow_control import Concurrency, RateLimit

_OPTION_ORDER = ("max_attempts", "base_delay", "timeout", "start_delay")


def _options_clause(options: Mapping[str, int | None]) -> str:
    parts = [
        f"{name} => {options[name]}" for name in _OPTION_ORDER if options.get(name) is not None
    ]
    return f", {', '.join(parts)}" if parts else ""


def compile_flow(definition: FlowDefinition) -> list[str]:
    """``create_flow`` then one ``add_step`` per step, in declaration order.

    A job gets one more statement (our additive ``flows.flow_type`` column), and so do each
    step with a condition (our ``step_conditions`` table, extension/0061), each wait step,
    subflow step and a ``run_timeout`` (extension/0070-0073); TypeScript 0.8.1 has none of
    them, so parity with ``compileFlow`` holds for every flow without them.
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
    statements += [
        _condition_statement(definition.slug, s) for s in definition.steps if s.has_condition
    ]
    if definition.flow_type is FlowType.JOB:
        statements.append(
            f"UPDATE pgflow.flows SET flow_type = 'job' WHERE flow_slug = '{definition.slug}';"
        )
    statements += [_wait_statement(definition.slug, s) for s in definition.steps if s.wait]
    statements += [
        f"SELECT pgflow_python.set_subflow_step('{definition.slug}', '{s.slug}', '{s.subflow}');"
        for s in definition.steps
        if s.subflow is not None
    ]
    if definition.run_timeout is not None:
        statements.append(
            f"SELECT pgflow_python.set_flow_run_timeout('{definition.slug}', "
            f"{definition.run_timeout});"
        )
    if definition.concurrency is not None:
        statements.append(_concurrency_statement(definition.slug, definition.concurrency))
    if definition.rate_limit is not None:
        statements.append(rate_limit_statement(definition.slug, None, definition.rate_limit))
    for step in definition.steps:
        if step.concurrency is not None:
            statements.append(_concurrency_statement(definition.slug, step.concurrency, step.slug))
        if step.rate_limit is not None:
            statements.append(rate_limit_statement(definition.slug, step.slug, step.rate_limit))
    if definition.priority is not None:
        statements.append(
            f"SELECT pgflow_python.set_flow_priority('{definition.slug}', {definition.priority});"
        )
    return statements


def _concurrency_statement(
    flow_slug: str, concurrency: Concurrency, step_slug: str | None = None
) -> str:
    """Our ``concurrency_limits`` row (extension/0080); key parts are validated names."""
    key = (
        "ARRAY[" + ", ".join(f"'{part}'" for part in concurrency.key_path) + "]"
        if concurrency.key_path
        else "NULL"
    )
    return (
        f"SELECT pgflow_python.set_concurrency_limit('{flow_slug}', "
        f"{'NULL' if step_slug is None else repr(step_slug)}, "
        f"{concurrency.limit}, {key});"
    )


def rate_limit_statement(flow_slug: str, step_slug: str | None, limit: RateLimit) -> str:
    """Our ``rate_limits`` row (extension/0082); key parts and names are validated."""
    key = (
        "ARRAY[" + ", ".join(f"'{part}'" for part in limit.key_path) + "]"
        if limit.key_path
        else "NULL"
    )
    step = "NULL" if step_slug is None else f"'{step_slug}'"
    name = "NULL" if limit.name is None else f"'{limit.name}'"
    return (
        f"SELECT pgflow_python.set_rate_limit('{flow_slug}', {step}, {limit.limit}, "
        f"make_interval(secs => {limit.seconds!r}), {key}, {name});"
    )


# pgflow_python.set_step_condition's argument for each condition option (upstream 0.14's names).
_CONDITION_ARGUMENTS = {
    "if_": "required_input_pattern",
    "if_not": "forbidden_input_pattern",
    "when_unmet": "when_unmet",
    "retries_exhausted": "when_exhausted",
}


def _condition_statement(flow_slug: str, step: StepDefinition) -> str:
    arguments = []
    for option, argument in _CONDITION_ARGUMENTS.items():
        value = step.condition[option]
        if value is None:
            continue
        if option in ("if_", "if_not"):
            arguments.append(f"{argument} => {sql_json(value)}")
        else:
            arguments.append(f"{argument} => '{value}'")  # a validated WhenUnmet value
    return (
        f"SELECT pgflow_python.set_step_condition('{flow_slug}', '{step.slug}', "
        f"{', '.join(arguments)});"
    )


def sql_json(value: object) -> str:
    """A JSON value as a SQL literal that every executor runs unchanged: quotes doubled, and
    in strings ``:`` and ``%`` written as JSON escapes, so that neither SQLAlchemy's ``:name``
    bind parameters nor the driver's ``%`` placeholders can be read into a pattern."""
    text = json.dumps(value, ensure_ascii=False, separators=(", ", ": "), sort_keys=True)
    return "'" + _escape_in_strings(text).replace("'", "''") + "'::jsonb"


def _escape_in_strings(text: str) -> str:
    out = []
    in_string = escaped = False
    for char in text:
        if in_string and not escaped and char in ":%":
            out.append(f"\\u{ord(char):04x}")
            continue
        out.append(char)
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = in_string
        elif char == '"':
            in_string = not in_string
    return "".join(out)


def _wait_statement(flow_slug: str, step: StepDefinition) -> str:
    """Our ``wait_steps`` row (extension/0070); the values are validated enums and integers."""
    timeout = "NULL" if step.wait_timeout is None else str(step.wait_timeout)
    on_timeout = step.on_timeout or OnTimeout.FAIL
    return (
        f"SELECT pgflow_python.set_wait_step('{flow_slug}', '{step.slug}', "
        f"timeout_seconds => {timeout}, on_timeout => '{on_timeout}');"
    )
