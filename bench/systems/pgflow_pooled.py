"""pgflow-python through PgBouncer in transaction mode (docs/deployment.md, "Scaling out").

The same worker and workloads as ``pgflow-python``; the worker and the runs' starts go through a
PgBouncer of the benchmark's own (Debian's ``pgbouncer``, the tests' launcher) with
``?pool_mode=transaction``. Set-up and the counting that times the drain stay direct, so only
the system under test crosses the pooler. One PgBouncer per measurement: the harness drops and
recreates each database, which would leave a long-lived pooler holding dead server connections.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.engine import make_url

from bench._api import Drain, Timed
from bench.systems.pgflow_system import PgflowAdapter
from tests.helpers.pgbouncer import PgBouncer, pgbouncer

POOL_SIZE = 20


class PgflowPgBouncerAdapter(PgflowAdapter):
    name = "pgflow-python-pgbouncer"
    settings = (
        PgflowAdapter.settings
        + f"; worker and starts through PgBouncer (transaction mode, pool {POOL_SIZE}, "
        "?pool_mode=transaction), LISTEN on a direct --listen-url; P4 waits on a direct "
        "connection"
    )
    listens = True

    def __init__(self) -> None:
        self._bouncer: PgBouncer | None = None

    @contextmanager
    def _through_pooler(self, url: str) -> Iterator[None]:
        with pgbouncer(make_url(url), pool_size=POOL_SIZE) as started:
            self._bouncer = started
            try:
                yield
            finally:
                self._bouncer = None

    def served_url(self, url: str) -> str:
        assert self._bouncer is not None, "measured outside _through_pooler"
        return self._bouncer.libpq_url(str(make_url(url).database))

    def worker_args_for(self, url: str) -> tuple[str, ...]:
        return (*self.worker_args, "--listen-url", url) if self.listens else self.worker_args

    def drain(self, url: str, jobs: int, backlog: int) -> Drain:
        with self._through_pooler(url):
            return super().drain(url, jobs, backlog)

    def sequential_flows(self, url: str, runs: int) -> Timed:
        with self._through_pooler(url):
            return super().sequential_flows(url, runs)

    def map_fan_in(self, url: str, elements: int) -> Timed:
        with self._through_pooler(url):
            return super().map_fan_in(url, elements)

    def latency(self, url: str, samples: int) -> list[float]:
        with self._through_pooler(url):
            return super().latency(url, samples)


class PgflowPgBouncerPollingAdapter(PgflowPgBouncerAdapter):
    """Through PgBouncer with no direct URL at all: the worker polls (``--poll-interval`` 2 s)."""

    name = "pgflow-python-pgbouncer-polling"
    settings = (
        PgflowAdapter.settings
        + f"; worker and starts through PgBouncer (transaction mode, pool {POOL_SIZE}), no "
        "--listen-url: the worker polls every 2 s; P4 waits on a direct connection"
    )
    listens = False
