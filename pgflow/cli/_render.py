"""How the ``pgflow`` commands print results: plain tables for people, JSON for scripts."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import asdict, is_dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pgflow._durations import short_duration
from pgflow.operations import RunDetails, RunSummary, StepSummary, SubflowLink, WorkerInfo
from pgflow.results import TaskFailure

_DURATION_PART = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``1d12h``, ``90m``, ``45s``, ``2w`` as a timedelta."""
    compact = text.strip().lower()
    parts = _DURATION_PART.findall(compact)
    if not parts or "".join(n + u for n, u in parts) != compact:
        raise ValueError(f"{text!r} is not a duration such as 30d, 12h, 1d12h, 90m or 45s")
    try:
        return sum((timedelta(**{_UNITS[unit]: int(n)}) for n, unit in parts), timedelta())
    except OverflowError:
        raise ValueError(f"{text!r} is longer than the longest duration, 999999999d") from None


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """A duration back from now (``2h``) or an ISO 8601 time (UTC when no offset is given)."""
    try:
        span = parse_duration(text)
    except ValueError:
        pass
    else:
        now = now or datetime.now(UTC)
        # Further back than datetime goes: everything is newer than that.
        return now - min(span, now - datetime.min.replace(tzinfo=UTC))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (2h, 7d) nor a time (2026-11-29T08:00)"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def to_json(value: Any) -> str:
    """Dataclasses (or lists of them) as JSON; times in ISO 8601, durations in seconds."""
    if isinstance(value, list | tuple):
        plain: Any = [
            asdict(item) if is_dataclass(item) and not isinstance(item, type) else item
            for item in value
        ]
    else:
        plain = asdict(value) if is_dataclass(value) and not isinstance(value, type) else value
    return json.dumps(plain, indent=2, ensure_ascii=False, default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def duration(value: timedelta | None) -> str:
    return "-" if value is None else short_duration(value)


def size(octets: int) -> str:
    if octets < 1024:
        return f"{octets}B"
    if octets < 1024 * 1024:
        return f"{octets / 1024:.1f}KiB"
    return f"{octets / 1024 / 1024:.1f}MiB"


def moment(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _short(text: str | None, limit: int = 60) -> str:
    if not text:
        return ""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def run_status(status: str, cancelled: bool) -> str:
    return "cancelled" if cancelled else status


def runs_table(runs: Sequence[RunSummary]) -> str:
    if not runs:
        return "no runs"
    return table(
        ["RUN ID", "FLOW", "STATUS", "STARTED (UTC)", "DURATION", "LEFT", "NOTE"],
        [
            [
                str(run.run_id),
                run.flow_slug,
                run_status(run.status, run.cancelled),
                moment(run.started_at),
                duration(run.duration),
                str(run.remaining_steps),
                _note(run),
            ]
            for run in runs
        ],
    )


def _note(run: RunSummary) -> str:
    notes = []
    if run.cancel_reason:
        notes.append(_short(run.cancel_reason, 40))
    if run.restart_of_run_id:
        notes.append(f"retry of {run.restart_of_run_id}")
    if run.schedule_name:
        notes.append(f"schedule {run.schedule_name}")
    return "; ".join(notes)


def run_details(details: RunDetails) -> str:
    run = details.run
    ended = run.completed_at or run.failed_at
    lines = [
        f"run       {run.run_id}",
        f"flow      {run.flow_slug}",
        f"status    {run_status(run.status, run.cancelled)}"
        + (f" ({run.cancel_reason})" if run.cancel_reason else ""),
        f"started   {moment(run.started_at)} UTC",
        f"ended     {moment(ended)}" + (" UTC" if ended else ""),
        f"duration  {duration(details.active_duration(run.started_at, ended))}"
        + _time_failed(details, run.started_at, ended),
    ]
    if details.deadline_at:
        source = "start_flow" if details.deadline_source == "start_flow" else "run_timeout"
        lines.append(f"deadline  {moment(details.deadline_at)} UTC ({source})")
    if run.restart_of_run_id:
        lines.append(f"retry of  {run.restart_of_run_id}")
    if run.retried_as_run_id:
        lines.append(f"retried   as {run.retried_as_run_id}")
    if details.parent is not None:
        lines.append(f"parent    {_link(details.parent)}")
    lines += _children(details.children)
    for resume in details.resumes:
        what = "cancelled" if resume.was_cancelled else "failed"
        lines.append(
            f"resumed   {moment(resume.resumed_at)} UTC after it {what}"
            + (f" ({_short(resume.reason, 50)})" if resume.reason else "")
            + f"; {resume.tasks_requeued} task(s) queued again"
        )
    lines.append("")
    rows = []
    for position, step in enumerate(details.steps):
        branch = "└─" if position == len(details.steps) - 1 else "├─"
        rows.append(
            [
                f"{branch} {step.step_slug}" + (" [map]" if step.step_type == "map" else ""),
                ", ".join(step.depends_on) or "-",
                _step_status(step, details.children),
                f"{step.completed_tasks}/{step.tasks}" if step.tasks else "-",
                str(step.attempts),
                duration(details.active_duration(step.started_at, _step_end(step))),
                size(step.output_bytes) if step.completed_tasks else "-",
                _short(step.error_message),
            ]
        )
    lines.append(
        table(["STEP", "NEEDS", "STATUS", "TASKS", "ATTEMPTS", "DURATION", "OUTPUT", "ERROR"], rows)
    )
    lines += _last_failures(details)
    return "\n".join(lines)


def _link(link: SubflowLink) -> str:
    """``<run id> (<flow>, step <slug>[<index>], <status>)``."""
    return (
        f"{link.run_id or 'not started yet'} ({link.flow_slug}, step {link.step_slug}"
        f"[{link.task_index}], {link.status or link.outcome or 'pending'})"
    )


CHILDREN_SHOWN = 10
"""Children listed one per line by ``runs show``; more are counted by status."""


def _children(children: Sequence[SubflowLink]) -> list[str]:
    if not children:
        return []
    counts: dict[str, int] = {}
    for child in children:
        key = child.status or child.outcome or "pending"
        counts[key] = counts.get(key, 0) + 1
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    lines = [f"children  {len(children)} ({summary})"]
    lines += [f"          {_link(child)}" for child in children[:CHILDREN_SHOWN]]
    if len(children) > CHILDREN_SHOWN:
        lines.append(f"          ... and {len(children) - CHILDREN_SHOWN} more")
    return lines


def _time_failed(details: RunDetails, start: datetime, end: datetime | None) -> str:
    failed = details.time_failed(start, end)
    return f" (not counting {duration(failed)} failed before a resume)" if failed else ""


def _step_end(step: StepSummary) -> datetime | None:
    return step.completed_at or step.failed_at


def _step_status(step: StepSummary, children: Sequence[SubflowLink] = ()) -> str:
    mine = [c for c in children if c.step_slug == step.step_slug]
    if mine and step.status == "started":
        done = sum(c.outcome == "completed" for c in mine)
        return f"waiting for {len(mine)} child run{'s' if len(mine) != 1 else ''} ({done} done)"
    if step.skip_reason and step.status == "skipped":
        return f"{step.status} ({_SKIP_REASONS.get(step.skip_reason, step.skip_reason)})"
    if step.waiting:
        until = f" until {moment(step.waiting_until)}" if step.waiting_until else ""
        return f"waiting for a {step.waits_for} since {moment(step.waiting_since)}{until}"
    return str(step.status)


_SKIP_REASONS = {
    "condition_unmet": "condition unmet",
    "handler_failed": "attempts exhausted",
    "dependency_skipped": "upstream skipped",
    "wait_timeout": "no signal in time",
}


def _last_failures(details: RunDetails) -> list[str]:
    """The traceback of each failed step's last recorded attempt (Python workers record them)."""
    failed_steps = {step.step_slug for step in details.steps if step.status == "failed"}
    last: dict[str, TaskFailure] = {}
    for failure in details.failures:  # in the order they happened
        if failure.step_slug in failed_steps:
            last[failure.step_slug] = failure
    lines = []
    for failure in last.values():
        retry = "" if failure.retryable else ", not retryable"
        lines += [
            "",
            f"step {failure.step_slug!r} failed (task {failure.task_index}, attempt "
            f"{failure.attempt}{retry}): {failure.error_message}",
        ]
        if failure.traceback:
            lines += ["  " + line for line in failure.traceback.rstrip().splitlines()]
    return lines


def workers_table(workers: Sequence[WorkerInfo]) -> str:
    if not workers:
        return "no workers"
    now = datetime.now(UTC)
    return table(
        ["WORKER ID", "FLOW", "STATE", "LAST HEARTBEAT", "STARTED (UTC)", "TASKS", "FUNCTION"],
        [
            [
                str(worker.worker_id),
                worker.queue_name,
                worker.state,
                f"{duration(now - worker.last_heartbeat_at)} ago",
                moment(worker.started_at),
                str(worker.tasks_started),
                worker.function_name,
            ]
            for worker in workers
        ],
    )
