"""Worker settings; where they differ from the TypeScript worker's defaults, it says why."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import ClassVar

from pgflow._db import normalize_url, pooled_url

DAY = 86_400

_WHOLE = frozenset(
    {
        "concurrency",
        "batch_size",
        "visibility_timeout",
        "visibility_margin",
        "heartbeat_timeout",
        "max_requeues",
    }
)

_RANGES: Mapping[str, tuple[float, float]] = MappingProxyType(
    {
        # Bounded so that a typo cannot make a worker spin (NaN or 0 intervals), never act again
        # (infinite ones), or allocate without limit (a huge concurrency).
        "concurrency": (1, 10_000),
        "batch_size": (1, 10_000),
        "visibility_timeout": (1, DAY),
        "visibility_margin": (0, DAY),
        "poll_interval": (0.01, DAY),
        "heartbeat_interval": (0.01, DAY),
        "shutdown_timeout": (0, DAY),
        "recovery_interval": (0.01, DAY),
        "heartbeat_timeout": (1, 7 * DAY),
        "max_requeues": (0, 1_000),
        "statistics_interval": (0.01, DAY),
        "cancel_check_interval": (0.01, DAY),
        "deadline_check_interval": (0.01, DAY),
        "blocked_loop_warning": (0.01, DAY),
    }
)


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    # Each numeric option's valid values, both ends included (docs/workers.md lists them).
    VALID_RANGES: ClassVar[Mapping[str, tuple[float, float]]] = _RANGES

    concurrency: int = 10
    """Handlers running at once in this process (over all flows it serves)."""
    batch_size: int = 10
    """Messages claimed per round trip (never more than free handler slots)."""
    visibility_timeout: int = 5
    """Seconds a read message is reserved before start_tasks claims it; the claim statement
    then keeps it invisible for the step's timeout plus ``visibility_margin``."""
    visibility_margin: int = 5
    """Seconds added to a step's timeout to keep a claimed message invisible."""
    poll_interval: float = 2.0
    """Longest idle wait without a wake-up; NOTIFY and the next visible message wake earlier."""
    heartbeat_interval: float = 5.0
    """Seconds between this worker's heartbeats in ``pgflow.workers``."""
    shutdown_timeout: float = 30.0
    """After SIGTERM: how long in-flight handlers may finish before they are cancelled."""
    recovery_interval: float = 10.0
    """How often this worker offers to run the stalled-task sweep (one worker runs it at a time)."""
    heartbeat_timeout: int = 30
    """A worker silent this long is considered dead; its started tasks are recovered."""
    max_requeues: int = 3
    """Recoveries of one task before it is failed as stalled."""
    statistics_interval: float = 10.0
    """How often this worker offers to refresh planner statistics where autovacuum is off."""
    cancel_check_interval: float = 0.5
    """While tasks run: how often to ask whether their runs were cancelled (``cancel_run``)."""
    deadline_check_interval: float = 5.0
    """How often this worker offers to time out waits and cancel runs past their deadline
    (one worker does it at a time; docs/waiting.md)."""
    scheduler: bool = True
    """Fire due schedules (docs/schedules.md); every worker may, each tick still fires once."""
    blocked_loop_warning: float = 1.0
    """Seconds the event loop may be blocked (an async handler calling blocking code) before
    ``worker.loop_blocked`` is logged. Heartbeats go on meanwhile (they have a thread)."""
    listen_url: str | None = field(default=None, repr=False)
    """A direct database URL (not through a transaction pooler) for the one LISTEN connection
    that wakes idle pollers at once. Default: the database URL, unless that goes through a
    transaction pooler (pool_mode=transaction); then the worker polls every poll_interval."""

    def __post_init__(self) -> None:
        for name, (low, high) in _RANGES.items():
            value = getattr(self, name)
            whole = name in _WHOLE
            if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
                kind = "a whole number" if whole else "a number"
                raise TypeError(f"{name} must be {kind}, got {value!r}")
            if not (math.isfinite(value) and low <= value <= high):
                raise ValueError(f"{name} must be from {low:g} to {high:g}, got {value!r}")
        if self.listen_url is not None and pooled_url(self.listen_url):
            # LISTEN through a transaction pooler is accepted and then receives nothing.
            raise ValueError(
                "listen_url must reach the server directly (or through a session pool), "
                "not through a transaction pooler: LISTEN there receives nothing"
            )
        if self.listen_url is not None:
            normalize_url(self.listen_url)  # a malformed URL fails here, not in a thread later
        if self.heartbeat_timeout < 2 * self.heartbeat_interval:
            # Otherwise a live worker's own tasks look stalled between two of its heartbeats.
            raise ValueError(
                f"heartbeat_timeout ({self.heartbeat_timeout}) must be at least twice "
                f"heartbeat_interval ({self.heartbeat_interval})"
            )
