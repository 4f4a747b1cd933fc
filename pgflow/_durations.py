"""How a duration reads and what it counts wherever the library shows one (the CLI's tables,
the dashboard): a resumed run's durations leave out the time it sat failed."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta


def short_duration(value: timedelta | float) -> str:
    """``850ms``, ``12.3s``, ``4.5m``, ``3.2h``, ``2.0d``: compact, for columns and labels."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


FailedSpan = tuple[datetime | None, datetime]
"""``(failed_at, resumed_at)`` of one resume of a run: it sat failed (or cancelled) in between
(``failed_at`` None: unknown, nothing is left out)."""


def time_failed(
    spans: Iterable[FailedSpan], start: datetime | None, end: datetime | None
) -> timedelta:
    """How much of ``start`` to ``end`` a run sat failed or cancelled before its resumes."""
    if start is None or end is None:
        return timedelta()
    total = timedelta()
    for failed_at, resumed_at in spans:
        if failed_at is not None:
            total += max(min(end, resumed_at) - max(start, failed_at), timedelta())
    return total


def active_duration(
    spans: Iterable[FailedSpan], start: datetime | None, end: datetime | None
) -> timedelta | None:
    """``end - start`` without the time the run sat failed or cancelled before a resume (of a
    run, or of one of its steps): what every duration of a resumed run shows; None while
    ``start`` or ``end`` is unknown."""
    if start is None or end is None:
        return None
    return end - start - time_failed(spans, start, end)
