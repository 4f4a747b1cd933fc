"""The worker's database connections: sync psycopg, driven from anyio through worker threads.

psycopg's async connections only run on asyncio; blocking connections in threads work the same
on asyncio and trio. Each connection belongs to one activity (claiming, reporting, heartbeats),
so no two threads ever share one. A lost connection is reopened with backoff on next use.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.to_thread
import psycopg
from psycopg.rows import dict_row

from pgflow import _sql

Row = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ClaimedTask:
    flow_slug: str
    run_id: uuid.UUID
    step_slug: str
    task_index: int
    message_id: int
    attempt: int
    timeout: int
    """Effective step timeout in seconds (step option, else flow option)."""
    record: Mapping[str, Any]
    """start_tasks' record by column name; its shape depends on the upstream version."""


class Connection:
    """One lazily (re)opened autocommit connection, used from a single activity at a time."""

    def __init__(self, conninfo: str, *, application_name: str) -> None:
        self._conninfo = conninfo
        self._application_name = application_name
        self._connection: psycopg.Connection[Row] | None = None
        self._lock = anyio.CapacityLimiter(1)

    def _connect(self) -> psycopg.Connection[Row]:
        if self._connection is None or self._connection.closed:
            self._connection = psycopg.connect(
                self._conninfo,
                autocommit=True,
                row_factory=dict_row,
                application_name=self._application_name,
                connect_timeout=5,
            )
        return self._connection

    def _discard(self) -> None:
        if self._connection is not None:
            self._connection.close()
        self._connection = None

    def _fetch(self, name: str, params: Mapping[str, Any]) -> list[Row]:
        try:
            cursor = self._connect().execute(_sql.psycopg_text(name), params, prepare=True)
            return cursor.fetchall() if cursor.description else []
        except psycopg.OperationalError:
            self._discard()  # reconnect on next use; the caller decides whether to retry
            raise

    async def fetch(self, name: str, **params: Any) -> list[Row]:
        return await anyio.to_thread.run_sync(self._fetch, name, params, limiter=self._lock)

    async def close(self) -> None:
        await anyio.to_thread.run_sync(self._discard, limiter=self._lock)


def claimed_from_rows(rows: Sequence[Row]) -> list[ClaimedTask]:
    tasks = []
    for row in rows:
        record = row["task"]
        tasks.append(
            ClaimedTask(
                flow_slug=record["flow_slug"],
                run_id=uuid.UUID(record["run_id"]),
                step_slug=record["step_slug"],
                task_index=record.get("task_index") or 0,
                message_id=record["msg_id"],
                attempt=row["attempt"],
                timeout=row["timeout"],
                record=record,
            )
        )
    return tasks
