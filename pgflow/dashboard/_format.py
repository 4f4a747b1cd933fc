"""Turning database values into display text (escaping is the templates' job, always on)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pgflow._durations import FailedSpan, active_duration, short_duration

NOTHING = "\u2013"  # an en dash: no value


@dataclass(frozen=True)
class Preview:
    """A value shown in a page: pretty when whole, cut (with its full size) when large."""

    text: str
    truncated: bool
    total_chars: int


def json_preview(preview: str | None, total_chars: int | None) -> Preview | None:
    """``preview`` is ``left(value::text, n)`` and ``total_chars`` the full length; None when
    the value is SQL NULL."""
    if preview is None or total_chars is None:
        return None
    if len(preview) >= total_chars:
        try:
            return Preview(json.dumps(json.loads(preview), indent=2), False, total_chars)
        except ValueError:
            return Preview(preview, False, total_chars)
    return Preview(preview, True, total_chars)


def text_preview(preview: str | None, total_chars: int | None) -> Preview | None:
    if preview is None or total_chars is None:
        return None
    return Preview(preview, len(preview) < total_chars, total_chars)


def duration(seconds: float | None) -> str:
    return NOTHING if seconds is None else short_duration(seconds)


def between(start: datetime | None, end: datetime | None) -> str:
    if start is None or end is None:
        return NOTHING
    return duration((end - start).total_seconds())


def took(start: datetime | None, end: datetime | None, failed_spans: Iterable[FailedSpan]) -> str:
    """A run's or a step's duration without the time the run sat failed before a resume."""
    active = active_duration(failed_spans, start, end)
    return duration(None if active is None else active.total_seconds())


def failed_spans(row: dict[str, Any]) -> list[FailedSpan]:
    """A run row's resumes (its ``resumes_failed_at`` and ``resumed_at``) as pairs."""
    return list(zip(row["resumes_failed_at"] or (), row["resumed_at"] or (), strict=True))


def ago(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "never"
    seconds = (now - moment).total_seconds()
    if seconds < 0:
        return "in " + duration(-seconds)
    return duration(seconds) + " ago"


def timestamp(moment: datetime | None) -> str:
    if moment is None:
        return NOTHING
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S") + f".{moment.microsecond // 1000:03d}"


def percent(ratio: float | None) -> str:
    return NOTHING if ratio is None else f"{ratio * 100:.1f} %"


def parse_time(value: str | None) -> datetime | None:
    """A time from a form field (``datetime-local`` or ISO 8601); naive times are taken as UTC
    so that links built from displayed times round-trip."""
    if not value:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
