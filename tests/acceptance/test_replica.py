"""Reads from a streaming replica (docs/deployment.md, "Scaling out"): a cluster of the test's own
with a hot standby made by ``pg_basebackup -R``; the dashboard's pages and the read APIs read from
the standby, its actions go to the primary, and the header shows the standby's lag."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgflow import _db
from pgflow.dashboard import create_app
from pgflow.operations import describe_run, list_runs, list_workers
from pgflow.schedules import Cron, create_schedule, get_schedule, list_schedules
from pgflow.schema import install
from tests.helpers import database
from tests.helpers.dashboard import (
    PIPELINE_HANDLERS,
    Pipeline,
    drive,
    http_client,
    register,
    row_cells,
    start,
)
from tests.helpers.own_cluster import OwnCluster, own_cluster, streaming_replica
from tests.helpers.waiting import wait_until

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clusters() -> Iterator[tuple[OwnCluster, OwnCluster]]:
    with own_cluster() as primary, streaming_replica(primary) as replica:
        yield primary, replica


def run_status(engine: Engine, run_id: uuid.UUID) -> str | None:
    with engine.connect() as connection:
        status: str | None = connection.execute(
            sa.text("SELECT status FROM pgflow.runs WHERE run_id = :id"), {"id": run_id}
        ).scalar()
        return status


def cancelled_on(engine: Engine, run_id: uuid.UUID) -> bool:
    with engine.connect() as connection:
        return bool(
            connection.execute(
                sa.text("SELECT count(*) FROM pgflow_python.run_cancellations WHERE run_id = :id"),
                {"id": run_id},
            ).scalar_one()
        )


def test_dashboard_reads_from_a_streaming_replica_and_acts_on_the_primary(
    clusters: tuple[OwnCluster, OwnCluster],
) -> None:
    primary_cluster, replica_cluster = clusters
    primary = _db.create_engine(primary_cluster.url)
    replica = _db.create_engine(replica_cluster.url)
    try:
        install(primary)
        register(primary, Pipeline)
        done = start(primary, "pipeline", {"n": 1})
        drive(primary, "pipeline", PIPELINE_HANDLERS, done)
        running = start(primary, "pipeline", {"n": 2})
        wait_until(
            lambda: run_status(replica, running) == "started",
            timeout=30,
            what="the replica to replay the runs",
        )

        # The read APIs work on the standby (nothing they run writes).
        assert {run.run_id for run in list_runs(replica)} == {done, running}
        details = describe_run(replica, done)
        assert details is not None
        assert details.run.status.value == "completed"
        assert list_workers(replica) is not None

        with http_client(create_app(primary, read_engine=replica)) as client:
            for page in ("/", "/flows", "/flows/pipeline", "/runs", f"/runs/{done}", "/workers"):
                response = client.get(page)
                assert response.status_code == 200, (page, response.text[-2000:])
                assert 'id="replica-lag"' in response.text, page
                assert re.search(r"replica \d+\.\d s behind", response.text), page

            # With replay paused, a run started on the primary is not on the pages: they read
            # from the replica. An action still reaches the primary.
            with replica.connect() as connection:
                connection.execute(sa.text("SELECT pg_wal_replay_pause()"))
            try:
                unseen = start(primary, "pipeline", {"n": 3})
                listed = client.get("/runs").text
                assert str(unseen) not in listed
                assert row_cells(listed, "data-run-id", str(running))
                action = f"/runs/{running}/actions/cancel"
                token = re.search(r'name="csrf_token" value="([^"]+)"', client.get(action).text)
                assert token is not None
                origin = {"origin": str(client.base_url).rstrip("/")}
                acted = client.post(action, data={"csrf_token": token[1]}, headers=origin)
                assert acted.status_code == 303, acted.text[-2000:]
                assert cancelled_on(primary, running)
                assert not cancelled_on(replica, running)
            finally:
                with replica.connect() as connection:
                    connection.execute(sa.text("SELECT pg_wal_replay_resume()"))

            wait_until(lambda: cancelled_on(replica, running), timeout=30, what="replay to resume")
            assert str(unseen) in client.get("/runs").text
            assert 'id="run-cancelled"' in client.get(f"/runs/{running}").text

            # A bulk action and a schedule action reach the primary too.
            confirm = client.get("/runs/bulk/cancel", params={"flow": "pipeline"}).text
            fields = dict(re.findall(r'type="hidden" name="([^"]+)" value="([^"]*)"', confirm))
            assert fields["expected"] == "1", confirm[-2000:]  # the one started after the pause
            bulk = client.post("/runs/bulk/cancel", data=fields, headers=origin)
            assert bulk.status_code == 200, bulk.text[-2000:]
            assert re.search(r'id="bulk-done">1<', bulk.text), bulk.text[-2000:]
            assert cancelled_on(primary, unseen)
            create_schedule(primary, Pipeline, Cron("0 3 * * *", name="nightly"))
            wait_until(
                lambda: any(s.name == "nightly" for s in list_schedules(replica)),
                timeout=30,
                what="the replica to replay the schedule",
            )
            pause = "/schedules/nightly/actions/pause"
            token = re.search(r'name="csrf_token" value="([^"]+)"', client.get(pause).text)
            assert token is not None
            paused = client.post(pause, data={"csrf_token": token[1]}, headers=origin)
            assert paused.status_code == 303, paused.text[-2000:]
            assert get_schedule(primary, "nightly").paused

        # The command line's read commands take the replica too (--read-url, PGFLOW_READ_URL).
        with replica.connect() as connection:
            connection.execute(sa.text("SELECT pg_wal_replay_pause()"))
        latest = start(primary, "pipeline", {"n": 4})
        command = subprocess.run(
            [sys.executable, "-m", "pgflow", "runs", "list", "--json"],
            env={
                **os.environ,
                "DATABASE_URL": database.libpq_url(primary_cluster.url),
                "PGFLOW_READ_URL": database.libpq_url(replica_cluster.url),
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        shown = {run["run_id"] for run in json.loads(command.stdout)}
        assert str(done) in shown
        assert str(latest) not in shown  # started on the primary, not replayed yet
    finally:
        primary.dispose()
        replica.dispose()


def test_the_deployment_guide_replica_sample_runs(
    clusters: tuple[OwnCluster, OwnCluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    primary_cluster, replica_cluster = clusters
    install(primary_cluster.url)
    monkeypatch.setenv("DATABASE_URL", database.libpq_url(primary_cluster.url))
    monkeypatch.setenv("PGFLOW_READ_URL", database.libpq_url(replica_cluster.url))
    guide = (ROOT / "docs" / "deployment.md").read_text()
    [sample] = [b for b in re.findall(r"```python\n(.*?)```", guide, re.S) if "read_engine" in b]
    wait_until(
        lambda: "pgflow" in database.schemas(replica_cluster.url),
        timeout=30,
        what="the replica to replay the installation",
    )
    namespace: dict[str, object] = {}
    exec(compile(sample, "docs/deployment.md", "exec"), namespace)  # noqa: S102
    assert namespace["recent"] == []
    for name in ("primary", "replica"):
        namespace[name].dispose()  # type: ignore[attr-defined]


def test_dashboard_says_when_its_read_database_is_no_replica(
    clusters: tuple[OwnCluster, OwnCluster],
) -> None:
    primary_cluster, _ = clusters
    primary = _db.create_engine(primary_cluster.url)
    other = _db.create_engine(primary_cluster.url)
    try:
        install(primary)
        with http_client(create_app(primary, read_engine=other)) as client:
            page = client.get("/").text
        assert "read database is not a replica" in page
    finally:
        primary.dispose()
        other.dispose()
