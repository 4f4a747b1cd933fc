"""Worker settings; where they differ from the TypeScript worker's defaults, it says why."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class WorkerOptions:
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
    scheduler: bool = True
    """Fire due schedules (docs/schedules.md); every worker may, each tick still fires once."""
    blocked_loop_warning: float = 1.0
    """Seconds the event loop may be blocked (an async handler calling blocking code) before
    ``worker.loop_blocked`` is logged. Heartbeats go on meanwhile (they have a thread)."""

    def __post_init__(self) -> None:
        for name in ("concurrency", "batch_size", "visibility_timeout"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in (
            "poll_interval",
            "heartbeat_interval",
            "shutdown_timeout",
            "cancel_check_interval",
            "statistics_interval",
            "blocked_loop_warning",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.heartbeat_timeout < 2 * self.heartbeat_interval:
            # Otherwise a live worker's own tasks look stalled between two of its heartbeats.
            raise ValueError(
                f"heartbeat_timeout ({self.heartbeat_timeout}) must be at least twice "
                f"heartbeat_interval ({self.heartbeat_interval})"
            )
