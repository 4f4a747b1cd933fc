"""``pgflow runs``, ``pgflow workers`` and ``pgflow prune``: operating runs from a shell.

People get tables, scripts ``--json``. Exit codes as for every command: 0 done (also when the
run already was as asked, e.g. cancelled twice), 1 refused or failed (the run is in the wrong
state, unknown, or a database error), 2 usage, 3 no database.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Any

import click

from pgflow.cli._common import (
    database_url_option,
    engine_for,
    finish,
    json_option,
    read_url_option,
    reports_errors,
    require_flows,
)
from pgflow.cli._progress import PruneProgress
from pgflow.cli._render import (
    moment,
    parse_duration,
    parse_since,
    run_details,
    runs_table,
    workers_table,
)
from pgflow.client import signal
from pgflow.errors import PgflowError
from pgflow.operations import (
    DEFAULT_BATCH_SIZE,
    LISTABLE_STATUSES,
    PRUNABLE_STATUSES,
    CancelOutcome,
    ResumeOutcome,
    RetryOutcome,
    cancel_run,
    describe_run,
    list_runs,
    list_workers,
    prune,
    resolve_run_id,
    resume_run,
    retry_run,
)
from pgflow.results import SignalOutcome


def _since(_context: click.Context, _parameter: click.Parameter, value: str | None) -> Any:
    if value is None:
        return None
    try:
        return parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _run_id_or_prefix(_context: click.Context, _parameter: click.Parameter, value: str) -> str:
    """A whole run id or a prefix of one (4+ hex digits); resolved against the database later."""
    if not re.fullmatch(r"[0-9a-fA-F-]*", value) or len(value.replace("-", "")) < 4:
        raise click.BadParameter(f"{value!r} is neither a run id nor a prefix of one")
    return value


def _duration(_context: click.Context, _parameter: click.Parameter, value: str) -> Any:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _key_filter(
    _context: click.Context, _parameter: click.Parameter, value: str | None
) -> tuple[str, Any] | None:
    """``PATH=VALUE``: VALUE is JSON when it reads as a JSON scalar (7, true, "7"), else text."""
    if value is None:
        return None
    path, sep, text = value.partition("=")
    if not sep or not path or any(not part for part in path.split(".")):
        raise click.BadParameter(f"expected PATH=VALUE (tenant=acme), got {value!r}")
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    if isinstance(parsed, dict | list) or parsed is None:
        parsed = text
    return path, parsed


@click.group()
def runs() -> None:
    """List and inspect runs; cancel, retry or resume one; signal a waiting step."""


@runs.command("list")
@database_url_option
@read_url_option
@click.option("--flow", help="Only runs of this flow (slug).")
@click.option("--status", type=click.Choice(LISTABLE_STATUSES))
@click.option("--since", callback=_since, help="Started since: 2h, 7d, 2026-11-29T08:00.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option(
    "--waiting",
    is_flag=True,
    help="Only runs with a step waiting (for a signal, or for child runs).",
)
@click.option(
    "--key",
    callback=_key_filter,
    metavar="PATH=VALUE",
    help="Only runs whose input has VALUE at PATH, as a limit's key: tenant=acme, customer.id=7.",
)
@json_option
@reports_errors
def runs_list(
    *,
    database_url: str | None,
    read_url: str | None,
    flow: str | None,
    status: str | None,
    since: datetime | None,
    limit: int,
    waiting: bool,
    key: tuple[str, Any] | None,
    as_json: bool,
) -> None:
    """Runs, newest first."""
    with engine_for(read_url or database_url) as engine:
        found = list_runs(
            engine, flow=flow, status=status, since=since, limit=limit, waiting=waiting, key=key
        )
        if not found:
            require_flows(engine, flow)  # a typo lists nothing: say so
    finish(as_json, found, runs_table(found))


@runs.command("show")
@click.argument("run_id", callback=_run_id_or_prefix)
@database_url_option
@read_url_option
@json_option
@reports_errors
def runs_show(
    *, run_id: uuid.UUID | str, database_url: str | None, read_url: str | None, as_json: bool
) -> None:
    """A run and its steps: status, tasks, attempts, durations, errors, output sizes, and the
    traceback of each failed step's last attempt."""
    with engine_for(read_url or database_url) as engine:
        run_id = resolve_run_id(engine, run_id)
        details = describe_run(engine, run_id)
    if details is None:
        raise PgflowError(f"run {run_id} does not exist in this database")
    finish(as_json, details, run_details(details))


@runs.command("cancel")
@click.argument("run_id", callback=_run_id_or_prefix)
@click.option("--reason", help="Recorded with the cancellation and shown with the run.")
@database_url_option
@json_option
@reports_errors
def runs_cancel(
    *, run_id: uuid.UUID | str, reason: str | None, database_url: str | None, as_json: bool
) -> None:
    """Cancel a started run; its queued tasks never run, running handlers are told."""
    with engine_for(database_url) as engine:
        run_id = resolve_run_id(engine, run_id)
        result = cancel_run(engine, run_id, reason)
    text = {
        CancelOutcome.CANCELLED: f"cancelled run {run_id} ({result.tasks_cancelled} "
        "unfinished task(s) ended)",
        CancelOutcome.ALREADY_CANCELLED: f"run {run_id} was already cancelled",
        CancelOutcome.NOT_RUNNING: f"run {run_id} already ended {result.status}; nothing to cancel",
    }[result.outcome]
    finish(as_json, result, text, refused=not result.cancelled)


@runs.command("retry")
@click.argument("run_id", callback=_run_id_or_prefix)
@database_url_option
@json_option
@reports_errors
def runs_retry(*, run_id: uuid.UUID | str, database_url: str | None, as_json: bool) -> None:
    """Start a failed or cancelled run again as a new run (same flow, same input)."""
    with engine_for(database_url) as engine:
        run_id = resolve_run_id(engine, run_id)
        result = retry_run(engine, run_id)
    text = {
        RetryOutcome.RETRIED: f"retried run {run_id} as {result.new_run_id}",
        RetryOutcome.ALREADY_RETRIED: f"run {run_id} was already retried as {result.new_run_id}",
        RetryOutcome.NOT_FAILED: f"run {run_id} is {result.status}; only failed or "
        "cancelled runs can be retried",
    }[result.outcome]
    finish(as_json, result, text, refused=not result.retried)


@runs.command("resume")
@click.argument("run_id", callback=_run_id_or_prefix)
@database_url_option
@json_option
@reports_errors
def runs_resume(*, run_id: uuid.UUID | str, database_url: str | None, as_json: bool) -> None:
    """Continue a failed or cancelled run in place: only unfinished work runs again."""
    with engine_for(database_url) as engine:
        run_id = resolve_run_id(engine, run_id)
        result = resume_run(engine, run_id)
    text = {
        ResumeOutcome.RESUMED: f"resumed run {run_id}: {result.tasks_requeued} task(s) "
        f"queued again, run {result.status}",
        ResumeOutcome.NOT_FAILED: f"run {run_id} is {result.status}; only failed or "
        "cancelled runs can be resumed",
    }[result.outcome]
    finish(as_json, result, text, refused=not result.resumed)


def _json_value(_context: click.Context, _parameter: click.Parameter, value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}") from None


@runs.command("signal")
@click.argument("run_id", callback=_run_id_or_prefix)
@click.argument("step_slug")
@click.option(
    "--output",
    "output",
    callback=_json_value,
    default="null",
    show_default=True,
    help="The step's output, as JSON: --output '{\"approved\": true}'.",
)
@database_url_option
@json_option
@reports_errors
def runs_signal(
    *, run_id: uuid.UUID | str, step_slug: str, output: Any, database_url: str | None, as_json: bool
) -> None:
    """Complete wait step STEP_SLUG of a run with --output (docs/waiting.md); a repeated
    signal changes nothing and says so."""
    with engine_for(database_url) as engine:
        run_id = resolve_run_id(engine, run_id)
        result = signal(engine, run_id, step_slug, output)
    text = {
        SignalOutcome.COMPLETED: f"step {step_slug} of run {run_id} completed; run "
        f"{result.run_status}",
        SignalOutcome.KEPT: f"step {step_slug} of run {run_id} does not wait yet; the signal "
        "is kept and completes it when it does",
        SignalOutcome.ALREADY_SIGNALLED: f"step {step_slug} of run {run_id} was already "
        f"signalled at {moment(result.signalled_at)} UTC; nothing changed",
    }[result.outcome]
    finish(as_json, result, text)


@click.group()
def workers() -> None:
    """Inspect the workers registered in the database (Python and TypeScript)."""


@workers.command("list")
@database_url_option
@read_url_option
@click.option("--flow", help="Only workers of this flow (slug).")
@click.option(
    "--stale-after",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Seconds without a heartbeat after which a worker counts as dead.",
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@json_option
@reports_errors
def workers_list(
    *,
    database_url: str | None,
    read_url: str | None,
    flow: str | None,
    stale_after: int,
    limit: int,
    as_json: bool,
) -> None:
    """Worker rows, latest heartbeat first."""
    with engine_for(read_url or database_url) as engine:
        found = list_workers(engine, flow=flow, stale_after=stale_after, limit=limit)
        if not found:
            require_flows(engine, flow)
    finish(as_json, found, workers_table(found))


@click.command("prune")
@database_url_option
@click.option(
    "--older-than",
    required=True,
    callback=_duration,
    help="Keep what finished more recently than this: 30d, 12h, 1d12h.",
)
@click.option("--flow", "flows", multiple=True, help="Only this flow (repeatable).")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice(PRUNABLE_STATUSES),
    help="Only runs with this status (repeatable; default both).",
)
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_SIZE,
    show_default=True,
    help="Runs deleted per transaction.",
)
@json_option
@reports_errors
def prune_command(
    *,
    database_url: str | None,
    older_than: Any,
    flows: tuple[str, ...],
    statuses: tuple[str, ...],
    dry_run: bool,
    batch_size: int,
    as_json: bool,
) -> None:
    """Delete finished runs (with their steps, tasks, queue messages and records) and dead
    worker rows older than --older-than. Started runs are never touched."""
    progress = PruneProgress()
    with engine_for(database_url) as engine:
        require_flows(engine, *flows)
        try:
            report = prune(
                engine,
                older_than=older_than,
                statuses=statuses or PRUNABLE_STATUSES,
                flows=flows or None,
                dry_run=dry_run,
                batch_size=batch_size,
                progress=progress,
            )
        finally:
            progress.finish()
    verb = "would delete" if dry_run else "deleted"
    text = (
        f"{verb} {report.runs} run(s) finished before {moment(report.cutoff)} UTC: "
        f"{report.step_states} step state(s), {report.step_tasks} task(s), "
        f"{report.messages} queue message(s), {report.extension_rows} record(s); "
        f"{report.workers} worker row(s)" + ("" if dry_run else f" in {report.seconds:.1f}s")
    )
    finish(as_json, report, text)
