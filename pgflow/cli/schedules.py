"""``pgflow schedules list|sync|pause|resume|trigger|delete``."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime
from typing import Any

import click
from sqlalchemy.engine import Engine

from pgflow._loading import flow_classes
from pgflow.cli._common import (
    database_url_option,
    engine_for,
    json_option,
    reports_errors,
    require_flows,
)
from pgflow.cli._render import table, to_json
from pgflow.schedules import (
    Schedule,
    delete_schedule,
    list_schedules,
    pause_schedule,
    resume_schedule,
    sync_schedules,
    trigger_schedule,
)


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.isoformat(sep=" ", timespec="seconds")


def render(schedules: list[Schedule]) -> str:
    """A plain table, one schedule per line."""
    return table(
        ("NAME", "FLOW", "CRON", "TIMEZONE", "STATE", "NEXT FIRE", "LAST FIRE", "LAST ERROR"),
        [
            (
                schedule.name,
                schedule.flow_slug,
                schedule.cron.expression,
                schedule.cron.timezone,
                "paused" if schedule.paused else "active",
                _when(schedule.next_fire_at),  # none while paused
                _when(schedule.last_fire_at),
                (schedule.last_error or "-").splitlines()[0][:60],
            )
            for schedule in schedules
        ],
    )


def as_plain(schedule: Schedule) -> dict[str, Any]:
    """One schedule for ``--json``: its definition's fields flat, then its state."""
    plain = {"name": schedule.name, "flow_slug": schedule.flow_slug, **asdict(schedule.cron)}
    plain.update(
        {
            "paused": schedule.paused,
            **{key: value for key, value in asdict(schedule).items() if key != "cron"},
        }
    )
    return plain


@click.group("schedules")
def schedules_group() -> None:
    """List schedules, pause, resume, trigger or delete one (docs/schedules.md)."""


@schedules_group.command("list")
@database_url_option
@click.option("--flow", "flow_slug", help="Only the schedules of this flow.")
@json_option
@reports_errors
def list_command(database_url: str | None, flow_slug: str | None, as_json: bool) -> None:
    """Show every schedule: its cron, zone, state, next and last fire."""
    with engine_for(database_url) as engine:
        found = list_schedules(engine, flow_slug)
        if not found:
            require_flows(engine, flow_slug)
    if as_json:
        click.echo(to_json([as_plain(schedule) for schedule in found]))
    else:
        click.echo(render(found) if found else "no schedules")


@schedules_group.command("sync")
@click.argument("references", nargs=-1, required=True)
@database_url_option
@reports_errors
def sync_command(references: tuple[str, ...], database_url: str | None) -> None:
    """Store the schedules declared on flows (without Alembic): REFERENCES are module:Class
    or module. Creates and updates; deletes nothing."""
    sys.path.insert(0, os.getcwd())  # resolve references like `pgflow run-worker` does
    classes = [cls for reference in references for cls in flow_classes(reference)]
    with engine_for(database_url) as engine:
        changed = sync_schedules(engine, *classes)
    click.echo("\n".join(changed) if changed else "declared schedules are up to date")


def _one_schedule_command(
    name: str, help_text: str, action: Callable[[Engine, str], object]
) -> None:
    """``pgflow schedules NAME SCHEDULE_NAME``: one action on one schedule."""

    @schedules_group.command(name, help=help_text)
    @click.argument("schedule_name")
    @database_url_option
    @reports_errors
    def command(schedule_name: str, database_url: str | None) -> None:
        with engine_for(database_url) as engine:
            result = action(engine, schedule_name)
        click.echo(_said(name, result) if isinstance(result, Schedule) else result)


def _said(done: str, schedule: Schedule) -> str:
    """One line for what pause or resume did (``list`` shows the table)."""
    if schedule.paused:
        return f"paused schedule {schedule.name}: no runs until `pgflow schedules resume`"
    return f"resumed schedule {schedule.name}: next fire {_when(schedule.next_fire_at)}"


def _delete(engine: Engine, name: str) -> str:
    delete_schedule(engine, name)
    return f"deleted schedule {name}"


_one_schedule_command("pause", "Stop firing SCHEDULE_NAME until it is resumed.", pause_schedule)
_one_schedule_command(
    "resume",
    "Fire SCHEDULE_NAME again from its next tick (ticks while paused are not made up).",
    resume_schedule,
)
_one_schedule_command(
    "trigger",
    "Start a run of SCHEDULE_NAME now (prints the run id); its next tick stays.",
    trigger_schedule,
)
_one_schedule_command(
    "delete", "Delete SCHEDULE_NAME and its fire records (runs it started stay).", _delete
)
