"""Worker processes under measurement, and waiting on database conditions."""

from __future__ import annotations

import os
import selectors
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from types import TracebackType

import psycopg
from psycopg import sql

from bench._api import Drain

READY = "ready"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


class WorkerProcess:
    """``python -m <module> <args>`` as a worker: started, waited on until it prints ``ready``
    on stdout, measured (CPU seconds, RSS) through /proc, stopped with SIGTERM then SIGKILL."""

    def __init__(self, module: str, *args: str, ready_timeout: float = 60.0) -> None:
        self._command = [sys.executable, "-m", module, *args]
        self._ready_timeout = ready_timeout
        self._process: subprocess.Popen[str] | None = None
        self.ready_at = 0.0

    def __enter__(self) -> WorkerProcess:
        self._process = subprocess.Popen(
            self._command, stdout=subprocess.PIPE, text=True, env={**os.environ}
        )
        assert self._process.stdout is not None
        waiting = selectors.DefaultSelector()
        waiting.register(self._process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + self._ready_timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not waiting.select(timeout=remaining):
                break
            line = self._process.stdout.readline()
            if not line:
                break  # the worker exited
            if line.strip() == READY:
                self.ready_at = time.perf_counter()
                return self
        self.stop()
        raise RuntimeError(f"worker {' '.join(self._command[2:])} never became ready")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def _stat(self) -> list[str]:
        with open(f"/proc/{self.pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()

    def cpu_seconds(self) -> float:
        """User + system CPU of the worker process and its threads so far."""
        fields = self._stat()
        return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS

    def rss_kb(self) -> int:
        return int(self._stat()[21]) * _PAGE_KB

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def wait_until(
    url: str,
    query: str,
    params: Sequence[object],
    done: Callable[[int], bool],
    *,
    timeout: float,
    interval: float = 0.02,
) -> float:
    """Poll ``query`` (one integer) until ``done(value)``; the perf_counter time it became so."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as connection:
        while True:
            row = connection.execute(query, params).fetchone()
            value = int(row[0]) if row else 0
            if done(value):
                return time.perf_counter()
            if time.monotonic() > deadline:
                raise TimeoutError(f"still {value} after {timeout} s: {query}")
            time.sleep(interval)


# Tables of every schema but the system's, with at least one row (an ANALYZE of an empty table
# records "empty", and plans cached from that go quadratic once the table fills).
_FILLED_TABLES = """
SELECT n.nspname, c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%%'
"""


def analyze_filled_tables(url: str) -> list[str]:
    """ANALYZE every non-empty table: done after a bulk enqueue for every system alike, because
    this server runs with autovacuum off and a fresh database has no statistics at all."""
    analyzed = []
    with psycopg.connect(url, autocommit=True) as connection:
        for schema, table in connection.execute(_FILLED_TABLES).fetchall():
            name = sql.Identifier(schema, table)
            if connection.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(name)).fetchone():
                connection.execute(sql.SQL("ANALYZE {}").format(name))
                analyzed.append(f"{schema}.{table}")
    return analyzed


def measured_drain(
    worker: WorkerProcess, url: str, done_query: str, params: Sequence[object], jobs: int
) -> Drain:
    """Time ``worker`` from ``ready`` until ``done_query`` counts ``jobs``; its CPU and RSS."""
    rss_before, cpu_before = worker.rss_kb(), worker.cpu_seconds()
    done = wait_until(url, done_query, params, lambda n: n >= jobs, timeout=3600)
    return Drain(
        jobs=jobs,
        seconds=done - worker.ready_at,
        worker_cpu_seconds=worker.cpu_seconds() - cpu_before,
        rss_before_kb=rss_before,
        rss_after_kb=worker.rss_kb(),
    )
