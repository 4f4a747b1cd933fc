"""``pgflow run-worker``'s worker options, generated from :class:`WorkerOptions`.

Each field becomes ``--field-name`` (a bool ``--field-name/--no-field-name``) with the field's
default, its attribute docstring as help, and the environment variable ``PGFLOW_FIELD_NAME``.
A field added to ``WorkerOptions`` is on the command line without touching the CLI; the values
are checked by ``WorkerOptions`` itself, which the error message then names as flags.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import re
import textwrap
import typing
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, TypeVar

import click

from pgflow.errors import BadOptionsError
from pgflow.worker import WorkerOptions

F = TypeVar("F", bound=Callable[..., Any])

ENV_PREFIX = "PGFLOW_"


def flag(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def envvar(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


@cache
def field_docs() -> Mapping[str, str]:
    """Each field's attribute docstring (the string literal right below it), on one line."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(WorkerOptions)))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef)).body
    docs = {}
    for node, following in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def worker_options(command: F) -> F:
    """Add one click option per ``WorkerOptions`` field to ``command``."""
    types = typing.get_type_hints(WorkerOptions)
    for field in reversed(dataclasses.fields(WorkerOptions)):
        kind = types[field.name]
        declaration = flag(field.name)
        if kind is bool:
            declaration += "/" + flag("no_" + field.name)
        command = click.option(
            declaration,
            field.name,
            type=None if kind is bool else kind,
            default=field.default,
            show_default=True,
            envvar=envvar(field.name),
            show_envvar=True,
            help=field_docs().get(field.name),
        )(command)
    return command


def options_from(values: Mapping[str, Any]) -> WorkerOptions:
    """The ``WorkerOptions`` of the command line's values; a bad combination is a
    :class:`BadOptionsError` that names the flags."""
    names = {field.name for field in dataclasses.fields(WorkerOptions)}
    try:
        return WorkerOptions(**{name: value for name, value in values.items() if name in names})
    except ValueError as exc:
        message = re.sub(r"\b[a-z]+(?:_[a-z]+)*\b", _as_flag(names), str(exc))
        raise BadOptionsError(message) from None


def _as_flag(names: set[str]) -> Callable[[re.Match[str]], str]:
    return lambda match: flag(match[0]) if match[0] in names else match[0]
