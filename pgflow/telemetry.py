"""Structured events with stable names, routed through the application's logging, and hooks.

pgflow is a library: it never configures logging and prints nothing unless the application
asks. Every event goes

- through the application's structlog configuration when it has one (``structlog.configure``
  was called), with the logger name ``pgflow.<family>`` (``pgflow.task`` for ``task.failed``);
- otherwise to the standard-library logger ``pgflow.<family>``, so ``logging`` configuration
  decides levels and handlers. The record's message is an event dictionary whose text is
  ``task.failed flow=... step=...``; structlog's ``ProcessorFormatter`` renders it as a structured
  event (JSON or console) without any structlog configuration;
- to each subscribed hook, at every level::

    unsubscribe = pgflow.telemetry.subscribe(lambda event, fields: metrics.count(event))

The events and their fields are listed in docs/observability.md.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import structlog

from pgflow._logging import configure_logging

__all__ = ["Event", "Hook", "configure_logging", "emit", "subscribe"]


class Event(StrEnum):
    """Every event pgflow emits: the names are stable (dashboards and alerts match on them),
    each is documented in docs/observability.md (a test checks both ways), and ``emit`` is
    called with these names only (a test checks the source). A new event is a member here and a
    row there."""

    FLOW_OPTIONS_DIFFER = "flow.options_differ"
    METRICS_QUEUE_QUERY_FAILED = "metrics.queue_query_failed"
    METRICS_SERVING = "metrics.serving"
    POLL_FAILED = "poll.failed"
    POLL_FINISHED = "poll.finished"
    POLL_STARTED = "poll.started"
    RUN_CANCELLED_IN_FLIGHT = "run.cancelled_in_flight"
    RUN_COMPLETED = "run.completed"
    RUN_FAILED = "run.failed"
    RUN_SIGNALLED = "run.signalled"
    RUN_STARTED = "run.started"
    RUN_WAIT_RECONNECTING = "run.wait_reconnecting"
    RUNS_CANCEL_CHECK_FAILED = "runs.cancel_check_failed"
    RUNS_DEADLINES_ENFORCED = "runs.deadlines_enforced"
    RUNS_DEADLINE_SWEEP_FAILED = "runs.deadline_sweep_failed"
    SCHEDULE_FIRE_FAILED = "schedule.fire_failed"
    SCHEDULE_FIRED = "schedule.fired"
    SCHEDULER_PASS_FAILED = "scheduler.pass_failed"  # noqa: S105 (not a password)
    SCHEDULER_STARTED = "scheduler.started"
    STATISTICS_REFRESH_FAILED = "statistics.refresh_failed"
    STATISTICS_REFRESHED = "statistics.refreshed"
    SUBFLOW_CHILD_ENDED = "subflow.child_ended"
    SUBFLOW_CHILD_STARTED = "subflow.child_started"
    SUBFLOW_RELEASE_FAILED = "subflow.release_failed"
    SUBFLOW_START_FAILED = "subflow.start_failed"
    SUBFLOW_START_INTERRUPTED = "subflow.start_interrupted"
    SUBFLOW_STARTS_RELEASED = "subflow.starts_released"
    SUBFLOW_STARTER_FAILED = "subflow.starter_failed"
    TASK_CANCELLATION_IGNORED = "task.cancellation_ignored"
    TASK_CANCELLED = "task.cancelled"
    TASK_COMPLETED = "task.completed"
    TASK_FAILED = "task.failed"
    TASK_REJECTED = "task.rejected"
    TASK_REPORT_FAILED = "task.report_failed"
    TASK_REPORT_IGNORED = "task.report_ignored"
    TASK_REPORT_PRIVILEGE_MISSING = "task.report_privilege_missing"
    TASK_REPORT_RETRY = "task.report_retry"
    TASK_STARTED = "task.started"
    TASKS_RECOVERED = "tasks.recovered"
    TASKS_RECOVERY_FAILED = "tasks.recovery_failed"
    TASKS_RELEASED = "tasks.released"
    TELEMETRY_HOOK_FAILED = "telemetry.hook_failed"
    WAIT_ENDED = "wait.ended"
    WORKER_CRASHED = "worker.crashed"
    WORKER_DEPRECATED = "worker.deprecated"
    WORKER_EXIT_FORCED = "worker.exit_forced"
    WORKER_HEARTBEAT_FAILED = "worker.heartbeat_failed"
    WORKER_LOOP_BLOCKED = "worker.loop_blocked"
    WORKER_LOOP_UNBLOCKED = "worker.loop_unblocked"
    WORKER_POLLING = "worker.polling"
    WORKER_STARTED = "worker.started"
    WORKER_STOP_UNRECORDED = "worker.stop_unrecorded"
    WORKER_STOPPED = "worker.stopped"
    WORKER_STOPPING = "worker.stopping"
    WORKER_THREADS_STUCK = "worker.threads_stuck"


Hook = Callable[[str, dict[str, Any]], None]

# A library's loggers get a NullHandler (the logging HOWTO's advice for libraries): without any
# handler, Python's last-resort handler would print warnings to stderr in an application that
# never configured logging.
logging.getLogger("pgflow").addHandler(logging.NullHandler())

_hooks: list[Hook] = []
_hooks_lock = threading.Lock()
_stdlib_loggers: dict[str, logging.Logger] = {}
_structlog_loggers: dict[str, Any] = {}
_METHOD_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
    logging.CRITICAL: "critical",
}


def subscribe(hook: Hook) -> Callable[[], None]:
    """Call ``hook(event, fields)`` for every event; returns a function that unsubscribes."""
    with _hooks_lock:
        _hooks.append(hook)

    def unsubscribe() -> None:
        with _hooks_lock:
            if hook in _hooks:
                _hooks.remove(hook)

    return unsubscribe


def logger_name(event: str) -> str:
    """``task.failed`` is logged by ``pgflow.task``: one logger per event family, so an
    application can set ``pgflow.poll`` to DEBUG or silence ``pgflow.task`` on its own."""
    return "pgflow." + event.partition(".")[0]


def emit(event: str, *, level: int = logging.INFO, **fields: Any) -> None:
    _log(event, level, fields)
    with _hooks_lock:
        hooks = list(_hooks)
    for hook in hooks:
        try:
            hook(event, fields)
        except Exception:  # a broken metrics hook must never stop a worker
            _log(
                "telemetry.hook_failed",
                logging.ERROR,
                {"hook": repr(hook), "failed_event": event},
                exc_info=True,
            )


def _log(event: str, level: int, fields: dict[str, Any], *, exc_info: bool = False) -> None:
    name = logger_name(event)
    method = _METHOD_NAMES.get(level, "info")
    if structlog.is_configured():
        # The application chose structlog: our events take the same processors as its own.
        bound = _structlog_loggers.get(name)
        if bound is None:
            bound = _structlog_loggers[name] = structlog.get_logger(name)
        extra: dict[str, Any] = {"exc_info": True} if exc_info else {}
        getattr(bound, method)(event, **fields, **extra)
        return
    logger = _stdlib_loggers.get(name)
    if logger is None:
        logger = _stdlib_loggers[name] = logging.getLogger(name)
    if not logger.isEnabledFor(level):  # the common case in a quiet library: nearly free
        return
    # structlog's stdlib protocol (ProcessorFormatter.wrap_for_formatter): the message is the
    # event dictionary and the record names the logger and method, so a ProcessorFormatter on
    # any handler renders the event with its fields; plain formatters print its text.
    (message,), options = structlog.stdlib.ProcessorFormatter.wrap_for_formatter(
        logger, method, EventDict({"event": event, **fields})
    )
    logger.log(level, message, exc_info=exc_info, extra=options["extra"])


class EventDict(dict[str, Any]):
    """An event as a dict (for structlog's ProcessorFormatter) whose text is
    ``event key=value ...`` (for plain ``logging`` formatters); a traceback goes below the line."""

    def __str__(self) -> str:
        fields = dict(self)
        text = str(fields.pop("event", ""))
        traceback = fields.pop("exception", None)
        for key, value in fields.items():
            text += f" {key}={_text(value)}"
        if traceback:
            text += "\n" + str(traceback).rstrip("\n")
        return text


def _text(value: Any) -> str:
    if isinstance(value, str) and (not value or any(c.isspace() or c in "\"'=" for c in value)):
        return repr(value)
    return str(value)
