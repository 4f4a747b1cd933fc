"""Structured events (structlog) with stable names, and hooks for metrics and tracing.

Every event goes to the ``pgflow`` structlog logger and to each subscribed hook::

    unsubscribe = pgflow.telemetry.subscribe(lambda event, fields: metrics.count(event))

Events: ``worker.started``, ``worker.stopping``, ``worker.stopped``, ``poll.started`` and
``poll.finished`` (debug), ``task.started``, ``task.completed``, ``task.failed`` (flow, step,
run_id, task_index, attempt, duration_ms, error), ``task.report_retry``, ``tasks.recovered``,
``run.started`` (client).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import structlog

from pgflow._logging import configure_logging

__all__ = ["Hook", "configure_logging", "emit", "subscribe"]

Hook = Callable[[str, dict[str, Any]], None]

logger = structlog.get_logger("pgflow")
_hooks: list[Hook] = []
_hooks_lock = threading.Lock()


def subscribe(hook: Hook) -> Callable[[], None]:
    """Call ``hook(event, fields)`` for every event; returns a function that unsubscribes."""
    with _hooks_lock:
        _hooks.append(hook)

    def unsubscribe() -> None:
        with _hooks_lock:
            if hook in _hooks:
                _hooks.remove(hook)

    return unsubscribe


def emit(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, event, **fields)
    with _hooks_lock:
        hooks = list(_hooks)
    for hook in hooks:
        try:
            hook(event, fields)
        except Exception:  # a broken metrics hook must never stop a worker
            logger.exception("telemetry.hook_failed", hook=repr(hook), failed_event=event)
