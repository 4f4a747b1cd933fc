"""Cron schedules that start flows and jobs, fired exactly once however many workers run.

Declare them on a class (``class Nightly(Flow, schedule=Cron("0 3 * * *"))``; Alembic
autogenerate stores them) or manage them at run time with the functions here. Every
``pgflow run-worker`` fires due schedules (its scheduler service). See docs/schedules.md.
"""

from pgflow.cron import MISSED_POLICIES, Cron, Missed, schedules_of
from pgflow.errors import InvalidScheduleError, ScheduleError, ScheduleNotFoundError
from pgflow.schedules._api import (
    Schedule,
    create_schedule,
    create_schedule_async,
    declared_schedule_statement,
    delete_schedule,
    delete_schedule_async,
    get_schedule,
    get_schedule_async,
    list_schedules,
    list_schedules_async,
    pause_schedule,
    pause_schedule_async,
    resume_schedule,
    resume_schedule_async,
    sync_schedules,
    sync_schedules_async,
    trigger_schedule,
    trigger_schedule_async,
    update_schedule,
    update_schedule_async,
)
from pgflow.schedules._firing import FirePass, fire_due

__all__ = [
    "MISSED_POLICIES",
    "Cron",
    "FirePass",
    "InvalidScheduleError",
    "Missed",
    "Schedule",
    "ScheduleError",
    "ScheduleNotFoundError",
    "create_schedule",
    "create_schedule_async",
    "declared_schedule_statement",
    "delete_schedule",
    "delete_schedule_async",
    "fire_due",
    "get_schedule",
    "get_schedule_async",
    "list_schedules",
    "list_schedules_async",
    "pause_schedule",
    "pause_schedule_async",
    "resume_schedule",
    "resume_schedule_async",
    "schedules_of",
    "sync_schedules",
    "sync_schedules_async",
    "trigger_schedule",
    "trigger_schedule_async",
    "update_schedule",
    "update_schedule_async",
]
