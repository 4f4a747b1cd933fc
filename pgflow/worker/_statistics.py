"""Planner statistics for servers where autovacuum does not run (a background service).

Without statistics the claim's ``start_tasks`` scans the whole queued backlog on every call;
with statistics from an empty table, plans assume it stays empty. The SQL
(extension/0011_statistics_upkeep.sql) analyzes pgflow's tables and the served queues only where
autovacuum is off, only tables with rows, with autovacuum's own thresholds, one worker at a time.
"""

from __future__ import annotations

import logging

import anyio

from pgflow import telemetry
from pgflow.worker._repeats import RepeatedFailure
from pgflow.worker._session import ServingSession


class StatisticsUpkeep:
    """Offers at start and then every ``statistics_interval`` to refresh the statistics."""

    async def run(self, session: ServingSession) -> None:
        queue_names = [flow.slug for flow in session.flows]
        failures = RepeatedFailure("statistics.refresh_failed")
        while True:
            try:
                analyzed = await session.store.refresh_statistics(queue_names)
            except Exception as exc:  # the next round tries again; only plans suffer meanwhile
                failures.failed(error=str(exc))
            else:
                failures.succeeded()
                if analyzed:
                    telemetry.emit("statistics.refreshed", level=logging.DEBUG, tables=analyzed)
            await anyio.sleep(session.options.statistics_interval)
