"""How flow operations appear in a revision file: readable literal data, black-style layout.

The only import a revision needs is ``import alembic_pgflow`` (it registers the operations).
"""

from __future__ import annotations

import math
from typing import Any

from alembic.autogenerate import renderers
from alembic.autogenerate.api import AutogenContext

from alembic_pgflow._ops import CreateFlowOp, DropFlowOp, UpdateFlowOptionsOp

# Revision bodies are indented by 4 spaces; 88 is black's and ruff's default line length.
_WIDTH = 88 - 4
_INDENT = "    "


def literal(
    value: Any, indent: int = 0, width: int = _WIDTH, prefix: int = 0, expand: int = 0
) -> str:
    """``value`` (dicts, lists, strings, ints, bools, None) as Python source.

    A container stays on one line when it fits (counting ``prefix`` characters before it on
    the first line and ``indent`` levels) and is not among the ``expand`` outermost levels;
    otherwise it gets one item per line with a trailing comma.
    """
    flat = _flat(value)
    fits = len(_INDENT) * indent + prefix + len(flat) + 1 <= width
    if not _is_container(value) or (fits and expand <= 0):
        return flat
    inner = _INDENT * (indent + 1)
    if isinstance(value, dict):
        items = [
            f"{inner}{_flat(k)}: {literal(v, indent + 1, width, len(_flat(k)) + 2, expand - 1)},"
            for k, v in value.items()
        ]
        opening, closing = "{", "}"
    else:
        items = [f"{inner}{literal(v, indent + 1, width, 0, expand - 1)}," for v in value]
        opening, closing = "[", "]"
    return "\n".join([opening, *items, _INDENT * indent + closing])


def _is_container(value: Any) -> bool:
    return isinstance(value, dict | list | tuple) and bool(value)


def _flat(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_flat(k)}: {_flat(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_flat(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if value is None or isinstance(value, bool | int):
        return repr(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)  # a rate limit's period in seconds
    raise TypeError(f"cannot render {value!r} as literal flow data")


def _call(name: str, args: list[str]) -> str:
    """``op.name(args)`` on one line if it fits, else one argument per line."""
    one_line = f"op.{name}({', '.join(args)})"
    if len(one_line) <= _WIDTH and "\n" not in one_line:
        return one_line
    # Arguments come pre-laid-out for one indent level (see literal()), so no re-indenting.
    body = "\n".join(f"{_INDENT}{arg}," for arg in args)
    return f"op.{name}(\n{body}\n)"


def _keyword(name: str, value: Any) -> str:
    return f"{name}={literal(value, 1, prefix=len(name) + 1)}"


def _import(autogen_context: AutogenContext) -> None:
    # Unused by name but needed: importing it registers op.create_flow and friends.
    autogen_context.imports.add("import alembic_pgflow  # noqa: F401")


@renderers.dispatch_for(CreateFlowOp)
def _render_create_flow(autogen_context: AutogenContext, op: CreateFlowOp) -> str:
    _import(autogen_context)
    # The flow and its step list always span lines: one step per line reads (and diffs) best.
    return _call("create_flow", [literal(op.definition, 1, expand=2)])


@renderers.dispatch_for(DropFlowOp)
def _render_drop_flow(autogen_context: AutogenContext, op: DropFlowOp) -> str:
    _import(autogen_context)
    args = [_flat(op.flow_slug)]
    if op.delete_runs:
        args.append("delete_runs=True")
    call = _call("drop_flow", args)
    return f"# {op.reason}\n{call}" if op.reason else call


@renderers.dispatch_for(UpdateFlowOptionsOp)
def _render_update_flow_options(autogen_context: AutogenContext, op: UpdateFlowOptionsOp) -> str:
    _import(autogen_context)
    args = [_flat(op.flow_slug)]
    if op.flow:
        args.append(_keyword("flow", op.flow))
    if op.steps:
        args.append(_keyword("steps", op.steps))
    return _call("update_flow_options", args)
