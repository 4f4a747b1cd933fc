"""``pgflow run-worker``; its worker options are generated from :class:`WorkerOptions`.

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
import os
import re
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any, TypeVar

import click
import sqlalchemy as sa

from pgflow import _db, telemetry
from pgflow._loading import flow_classes
from pgflow._logging import configure_logging
from pgflow.cli._common import (
    database_url_option,
    log_format_option,
    log_level_option,
    reports_errors,
)
from pgflow.dsl import Flow
from pgflow.errors import BadOptionsError, PortInUseError
from pgflow.worker import Worker, WorkerOptions

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
    hints = typing.get_type_hints(WorkerOptions)
    for field in reversed(dataclasses.fields(WorkerOptions)):
        kind = _optional_of(hints[field.name])
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
            help=_help(field.name),
        )(command)
    return command


def _help(name: str) -> str | None:
    text = field_docs().get(name)
    if name in WorkerOptions.VALID_RANGES and text is not None:
        low, high = WorkerOptions.VALID_RANGES[name]
        text += f" Valid: {low:g} to {high:g}."
    return text


def _optional_of(kind: Any) -> Any:
    """``str`` for ``str | None`` (an option left out is None); other types as they are."""
    arguments = [a for a in typing.get_args(kind) if a is not type(None)]
    if isinstance(kind, types.UnionType) and len(arguments) == 1:
        return arguments[0]
    return kind


def options_from(values: Mapping[str, Any]) -> WorkerOptions:
    """The ``WorkerOptions`` of the command line's values; a bad combination is a
    :class:`BadOptionsError` that names the flags."""
    names = {field.name for field in dataclasses.fields(WorkerOptions)}
    try:
        return WorkerOptions(**{name: value for name, value in values.items() if name in names})
    except (ValueError, TypeError) as exc:
        message = re.sub(r"\b[a-z]+(?:_[a-z]+)*\b", _as_flag(names), str(exc))
        raise BadOptionsError(message) from None


def _as_flag(names: set[str]) -> Callable[[re.Match[str]], str]:
    return lambda match: flag(match[0]) if match[0] in names else match[0]


@click.command("run-worker")
@click.argument("references", nargs=-1, required=True)
@database_url_option
@worker_options
@log_format_option
@log_level_option
@click.option(
    "--otel",
    is_flag=True,
    help="OpenTelemetry spans and metrics through the global providers (e.g. set up by "
    "opentelemetry-instrument); needs pgflow-python[otel].",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(1, 65535),
    help="Serve Prometheus metrics on this port (/metrics); implies --otel for metrics.",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics endpoint binds (it has no authentication, like the dashboard "
    "it stays on loopback unless asked; 0.0.0.0 in a container scraped from outside).",
)
@click.option("--compile-missing", is_flag=True, help="Development: register missing flows.")
@reports_errors
def run_worker(
    *,
    references: tuple[str, ...],
    database_url: str | None,
    log_format: str | None,
    log_level: str | None,
    otel: bool,
    metrics_port: int | None,
    metrics_host: str,
    compile_missing: bool,
    **worker_settings: Any,
) -> None:
    """Run a worker for flows: REFERENCES are module:Class or module (all its flows).

    Every worker option can also be set as an environment variable (PGFLOW_CONCURRENCY=20).
    """
    if log_format or log_level:  # also accepted after the command name
        settings = click.get_current_context().find_root().obj
        configure_logging(log_format or settings["log_format"], log_level or settings["level"])
    sys.path.insert(0, os.getcwd())
    classes: list[type[Flow]] = []
    for reference in references:
        classes += flow_classes(reference)
    options = options_from(worker_settings)
    url = _db.url_from_env(database_url)
    if otel or metrics_port is not None:
        _instrument(url, metrics_port, metrics_host)
    worker = Worker(classes, url, compile_missing=compile_missing, options=options)
    worker.run()


def _instrument(url: sa.URL, metrics_port: int | None, metrics_host: str) -> None:
    try:
        from pgflow import otel  # noqa: PLC0415 - the optional extra, loaded only when asked
    except ImportError as exc:
        raise click.UsageError(str(exc)) from None
    meter_provider = None
    if metrics_port is not None:
        try:
            meter_provider = otel.serve_prometheus(metrics_port, addr=metrics_host)
        except OSError as exc:
            raise PortInUseError(
                f"cannot serve metrics on {metrics_host}:{metrics_port}: {exc.strerror or exc}; "
                "pass another --metrics-port (or stop what uses this one)"
            ) from None
        telemetry.emit("metrics.serving", url=f"http://{metrics_host}:{metrics_port}/metrics")
    otel.instrument(meter_provider=meter_provider, database=url)
