"""What every benchmarked system implements, and what the harness measures with it.

Each system (pgflow-python, the SQL floor, PgQueuer, Procrastinate, DBOS) is an ``Adapter``.
The harness gives it a fresh, empty database per workload and repetition, on the same server.
Workers run in their own process (``WorkerProcess``), so CPU time and RSS are the worker's
alone; the harness process enqueues and waits.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar


class NotSupported(Exception):
    """The system has no natural way to run this workload (the table shows "n/a" and why)."""


@dataclass(frozen=True)
class Drain:
    """P1/P5/P6/P7: ``jobs`` no-op jobs completed in ``seconds`` by one worker process."""

    jobs: int
    seconds: float
    worker_cpu_seconds: float
    rss_before_kb: int
    rss_after_kb: int

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    @property
    def cpu_ms_per_job(self) -> float:
        return 1000 * self.worker_cpu_seconds / self.jobs


@dataclass(frozen=True)
class Timed:
    """P2/P3: ``items`` (runs, or tasks) completed in ``seconds``."""

    items: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.items / self.seconds


class Adapter(abc.ABC):
    """One system under test. Every method starts its own worker process and stops it."""

    name: ClassVar[str]
    settings: ClassVar[str]
    """The settings used, stated in the report (each system's recommended fastest)."""

    @abc.abstractmethod
    def install(self, url: str) -> None:
        """Create the system's schema in the empty database at ``url``."""

    @abc.abstractmethod
    def drain(self, url: str, jobs: int, backlog: int) -> Drain:
        """Queue ``jobs + backlog`` no-op single-step jobs (untimed, committed), start one worker
        process, and time it from its start of work until ``jobs`` of them are completed.
        RSS is read when the worker is ready (before) and when ``jobs`` are done (after)."""

    @abc.abstractmethod
    def sequential_flows(self, url: str, runs: int) -> Timed:
        """P2: with a worker ready and idle, start ``runs`` runs of a flow of 3 steps in a chain
        (each step gets the previous output) and time until all are completed."""

    @abc.abstractmethod
    def map_fan_in(self, url: str, elements: int) -> Timed:
        """P3: with a worker ready and idle, start one run whose map step has ``elements`` tasks
        followed by a fan-in step over all outputs; time until it completes. ``items`` counts
        the map tasks."""

    @abc.abstractmethod
    def latency(self, url: str, samples: int) -> list[float]:
        """P4: with a worker ready and idle, ``samples`` times in a row: start a 1-step flow (or
        job) and wait for its completion as an application would; milliseconds each."""
