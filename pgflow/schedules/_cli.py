"""``pgflow schedules list|sync|pause|resume|trigger|delete`` (part of the ``pgflow`` command)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime
from typing import Any

import click
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import _db
from pgflow._loading import flow_classes
from pgflow.operations._render import to_json
from pgflow.schedules._api import (
    Schedule,
    delete_schedule,
    list_schedules,
    pause_schedule,
    resume_schedule,
    sync_schedules,
    trigger_schedule,
)


@contextmanager
def _engine(database_url: str | None) -> Iterator[Engine]:
    engine = _db.create_engine(_db.url_from_env(database_url), poolclass=sa.pool.NullPool)
    try:
        yield engine
    finally:
        engine.dispose()


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.isoformat(sep=" ", timespec="seconds")


def render(schedules: list[Schedule]) -> str:
    """A plain table, one schedule per line."""
    header = ("NAME", "FLOW", "CRON", "TIMEZONE", "STATE", "NEXT FIRE", "LAST FIRE", "LAST ERROR")
    rows = [header]
    for schedule in schedules:
        rows.append(
            (
                schedule.name,
                schedule.flow_slug,
                schedule.cron.expression,
                schedule.cron.timezone,
                "paused" if schedule.paused else "active",
                _when(schedule.next_fire_at),
                _when(schedule.last_fire_at),
                (schedule.last_error or "-").splitlines()[0][:60],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
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


def schedules_command(
    reports_errors: Callable[[Any], Any], database_url_option: Callable[[Any], Any]
) -> click.Group:
    """The group, with the ``pgflow`` command's error reporting and ``--database-url``."""

    @click.group("schedules")
    def schedules_group() -> None:
        """List schedules, pause, resume, trigger or delete one (docs/schedules.md)."""

    @schedules_group.command("list")
    @database_url_option
    @click.option("--flow", "flow_slug", help="Only the schedules of this flow.")
    @click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
    @reports_errors
    def list_command(database_url: str | None, flow_slug: str | None, as_json: bool) -> None:
        """Show every schedule: its cron, zone, state, next and last fire."""
        with _engine(database_url) as engine:
            found = list_schedules(engine, flow_slug)
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
        with _engine(database_url) as engine:
            changed = sync_schedules(engine, *classes)
        click.echo("\n".join(changed) if changed else "declared schedules are up to date")

    def one_schedule_command(
        name: str, help_text: str, action: Callable[[Engine, str], object]
    ) -> None:
        @schedules_group.command(name, help=help_text)
        @click.argument("schedule_name")
        @database_url_option
        @reports_errors
        def command(schedule_name: str, database_url: str | None) -> None:
            with _engine(database_url) as engine:
                result = action(engine, schedule_name)
            click.echo(render([result]) if isinstance(result, Schedule) else result)

    one_schedule_command("pause", "Stop firing SCHEDULE_NAME until it is resumed.", pause_schedule)
    one_schedule_command(
        "resume",
        "Fire SCHEDULE_NAME again from its next tick (ticks while paused are not made up).",
        resume_schedule,
    )
    one_schedule_command(
        "trigger",
        "Start a run of SCHEDULE_NAME now (prints the run id); its next tick stays.",
        trigger_schedule,
    )
    one_schedule_command(
        "delete",
        "Delete SCHEDULE_NAME and its fire records (runs it started stay).",
        _delete,
    )
    return schedules_group


def _delete(engine: Engine, name: str) -> str:
    delete_schedule(engine, name)
    return f"deleted schedule {name}"
