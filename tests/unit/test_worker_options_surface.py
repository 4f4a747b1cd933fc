"""WorkerOptions is the one statement of the worker's options: the command line is generated
from it, and docs/workers.md's table must list exactly its fields with their defaults."""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from pgflow.cli.worker import envvar, field_docs, flag, options_from, worker_options
from pgflow.errors import BadOptionsError
from pgflow.worker import WorkerOptions

DOCS = Path(__file__).resolve().parents[2] / "docs" / "workers.md"
FIELDS = {field.name: field for field in dataclasses.fields(WorkerOptions)}


def documented_options() -> dict[str, tuple[str, str]]:
    """``{option: (CLI cell, default cell)}`` from the options table of docs/workers.md."""
    rows = re.findall(r"^\| `(\w+)` \| ([^|]*) \| ([^|]*) \|", DOCS.read_text(), re.MULTILINE)
    return {name: (cli.strip(), default.strip()) for name, cli, default in rows if name in FIELDS}


def test_the_docs_table_lists_every_option_with_its_flag_and_default() -> None:
    table = documented_options()
    assert sorted(table) == sorted(FIELDS)
    for name, (cli, default) in table.items():
        assert flag(name) in cli, name
        value: Any = FIELDS[name].default
        if value is None:
            stated: Any = None if default == "None" else default
        else:
            stated = default == "True" if isinstance(value, bool) else type(value)(default)
        assert stated == value, name


def test_every_option_says_what_it_does() -> None:
    assert sorted(field_docs()) == sorted(FIELDS)


@worker_options
def show(**settings: Any) -> None:
    options = options_from(settings)
    click.echo(f"{options.concurrency} {options.heartbeat_interval} {options.scheduler}")


COMMAND = click.command()(show)


def test_each_option_is_a_flag_and_an_environment_variable() -> None:
    runner = CliRunner()
    assert runner.invoke(COMMAND, []).output == "10 5.0 True\n"
    result = runner.invoke(COMMAND, ["--concurrency", "3", "--no-scheduler"])
    assert result.output == "3 5.0 False\n"
    env = {envvar("heartbeat_interval"): "1.5", envvar("concurrency"): "7"}
    assert envvar("concurrency") == "PGFLOW_CONCURRENCY"
    assert runner.invoke(COMMAND, [], env=env).output == "7 1.5 True\n"


def test_a_bad_combination_names_the_flags() -> None:
    with pytest.raises(BadOptionsError) as raised:
        options_from({"heartbeat_interval": 20.0, "heartbeat_timeout": 30})
    assert str(raised.value) == (
        "--heartbeat-timeout (30) must be at least twice --heartbeat-interval (20.0)"
    )


def test_the_docs_table_states_each_options_valid_range() -> None:
    rows = re.findall(r"^\| `(\w+)` \| [^|]* \| [^|]* \| ([^|]*) \|", DOCS.read_text(), re.M)
    stated = {name: cell.strip() for name, cell in rows if name in FIELDS}
    assert sorted(WorkerOptions.VALID_RANGES) == sorted(
        name for name in FIELDS if name not in {"scheduler", "listen_url"}
    )
    for name, (low, high) in WorkerOptions.VALID_RANGES.items():
        found = re.match(r"([\d.,]+)\N{EN DASH}([\d.,]+)", stated[name])
        assert found, (name, stated[name])
        assert tuple(float(end.replace(",", "")) for end in found.groups()) == (low, high), name


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("heartbeat_interval", math.nan),
        ("poll_interval", math.nan),
        ("recovery_interval", math.nan),
        ("shutdown_timeout", math.nan),
        ("poll_interval", math.inf),
        ("cancel_check_interval", -1.0),
        ("statistics_interval", 0.0),
        ("blocked_loop_warning", -math.inf),
        ("max_requeues", -1),
        ("visibility_margin", -100),
        ("concurrency", 10**9),
        ("concurrency", 0),
        ("batch_size", True),
        ("visibility_timeout", 2.5),
        ("heartbeat_timeout", 10**9),
    ],
)
def test_values_outside_an_options_range_are_refused_with_its_name(name: str, value: Any) -> None:
    low, high = WorkerOptions.VALID_RANGES[name]
    with pytest.raises((ValueError, TypeError), match=rf"^{name} must be ") as raised:
        WorkerOptions(**{name: value})
    assert repr(value) in str(raised.value)
    # Both ends of the range are valid.
    companions: dict[str, dict[str, Any]] = {
        "heartbeat_timeout": {"heartbeat_interval": 0.5},
        "heartbeat_interval": {"heartbeat_timeout": 604_800},
    }
    related = companions.get(name, {})
    for end in (low, high):
        WorkerOptions(**{name: end, **related})
