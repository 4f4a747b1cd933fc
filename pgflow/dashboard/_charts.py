"""Geometry for the SVG charts: the throughput bars and a run's task timeline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

CHART_WIDTH = 720
CHART_HEIGHT = 140
TIMELINE_WIDTH = 720
TIMELINE_ROW = 18
TIMELINE_LABEL = 170


@dataclass(frozen=True)
class Bar:
    x: float
    width: float
    completed_y: float
    completed_height: float
    failed_y: float
    failed_height: float
    cancelled_y: float
    cancelled_height: float
    start: datetime
    completed: int
    failed: int
    cancelled: int


@dataclass(frozen=True)
class Tick:
    x: float
    text: str


@dataclass(frozen=True)
class Throughput:
    bars: list[Bar]
    peak: int
    ticks: list[Tick]
    width: int = CHART_WIDTH
    height: int = CHART_HEIGHT
    axis_height: int = 16


def throughput(
    rows: Sequence[Mapping[str, Any]], *, since: datetime, buckets: int, bucket: timedelta
) -> Throughput:
    """Stacked bars (completed, failed, cancelled from the bottom) for each bucket since
    ``since``, empty ones too."""
    counts = {
        row["bucket_start"]: (
            int(row["completed"]),
            int(row["failed"]),
            int(row.get("cancelled") or 0),
        )
        for row in rows
    }
    peak = max((sum(outcomes) for outcomes in counts.values()), default=0)
    slot = CHART_WIDTH / buckets
    bars = []
    for index in range(buckets):
        start = since + index * bucket
        completed, failed, cancelled = counts.get(start, (0, 0, 0))
        scale = (CHART_HEIGHT - 4) / peak if peak else 0
        completed_height = completed * scale
        failed_height = failed * scale
        cancelled_height = cancelled * scale
        bars.append(
            Bar(
                x=index * slot + 1,
                width=max(slot - 2, 1),
                completed_y=CHART_HEIGHT - completed_height,
                completed_height=completed_height,
                failed_y=CHART_HEIGHT - completed_height - failed_height,
                failed_height=failed_height,
                cancelled_y=CHART_HEIGHT - completed_height - failed_height - cancelled_height,
                cancelled_height=cancelled_height,
                start=start,
                completed=completed,
                failed=failed,
                cancelled=cancelled,
            )
        )
    ticks = [
        Tick(x=bar.x, text=bar.start.astimezone(UTC).strftime("%H:%M"))
        for index, bar in enumerate(bars)
        if index % max(buckets // 6, 1) == 0
    ]
    return Throughput(bars=bars, peak=peak, ticks=ticks)


@dataclass(frozen=True)
class Span:
    label: str
    status: str
    y: int
    wait_x: float  # queued -> started
    wait_width: float
    work_x: float  # started -> completed/failed (or now)
    work_width: float
    attempts: int
    failure_xs: list[float]  # when earlier attempts failed


@dataclass(frozen=True)
class Timeline:
    spans: list[Span]
    width: int
    height: int
    label_width: int
    total_seconds: float


def timeline(tasks: Sequence[Mapping[str, Any]], *, start: datetime, end: datetime) -> Timeline:
    """One row per task: waiting (queued to started) then working (started to its end, or to
    ``end`` while it runs). Upstream keeps one start time per task, that of its last attempt."""
    total = max((end - start).total_seconds(), 0.001)
    plot = TIMELINE_WIDTH - TIMELINE_LABEL

    def x_of(moment: datetime) -> float:
        offset = min(max((moment - start).total_seconds(), 0.0), total)
        return TIMELINE_LABEL + offset / total * plot

    spans = []
    for row_index, task in enumerate(tasks):
        queued = task["queued_at"]
        started = task["started_at"]
        finished = task["completed_at"] or task["failed_at"]
        label = task["step_slug"] + (f"[{task['task_index']}]" if task.get("is_map") else "")
        wait_from = x_of(queued)
        wait_to = x_of(started or finished or end)
        work_to = x_of(finished or end) if started is not None else wait_to
        spans.append(
            Span(
                label=label,
                status=str(task["status"]),
                y=row_index * TIMELINE_ROW + 4,
                wait_x=wait_from,
                wait_width=max(wait_to - wait_from, 0.0),
                work_x=wait_to,
                work_width=max(work_to - wait_to, 1.0) if started is not None else 0.0,
                attempts=int(task["attempts_count"]),
                failure_xs=[x_of(f["failed_at"]) for f in task.get("failures", [])],
            )
        )
    return Timeline(
        spans=spans,
        width=TIMELINE_WIDTH,
        height=len(spans) * TIMELINE_ROW + 8,
        label_width=TIMELINE_LABEL,
        total_seconds=total,
    )
