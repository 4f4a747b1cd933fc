"""The dashboard's pages that change things: confirmations, bulk cancel/retry with a count first,
the schedules page and its actions; and the small things (notes, labels, favicon)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

import sql_only_flow
from pgflow.cron import Cron
from pgflow.dashboard import create_app
from pgflow.operations import cancel_run, retry_run
from pgflow.schedules import create_schedule, get_schedule
from tests.helpers.dashboard import (
    FANOUT_HANDLERS,
    PIPELINE_HANDLERS,
    Fanout,
    Pipeline,
    drive,
    http_client,
    register,
    row_cells,
    serving,
    start,
)


@pytest.fixture
def engine(pgflow_engine: Engine) -> Engine:
    register(pgflow_engine, Pipeline, Fanout)
    return pgflow_engine


@pytest.fixture
def client(engine: Engine) -> Iterator[httpx.Client]:
    with http_client(create_app(engine)) as test_client:
        yield test_client


def _token(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match is not None, "no confirmation form on the page"
    return match.group(1)


def _hidden(page: str) -> dict[str, str]:
    return dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', page))


def _statuses(engine: Engine) -> dict[str, int]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT CASE WHEN c.run_id IS NULL THEN r.status ELSE 'cancelled' END, count(*)"
                " FROM pgflow.runs r LEFT JOIN pgflow_python.run_cancellations c USING (run_id)"
                " GROUP BY 1"
            )
        ).all()
    return {str(status): int(count) for status, count in rows}


def test_bulk_cancel_shows_the_count_then_cancels_exactly_the_matching_runs(
    engine: Engine, client: httpx.Client
) -> None:
    for n in range(3):
        start(engine, "pipeline", {"n": n})
    start(engine, "fanout", [1, 2])
    runs = client.get("/runs", params={"flow": "pipeline", "status": "started"}).text
    assert 'href="/runs/bulk/cancel?flow=pipeline&amp;status=started"' in runs

    confirm = client.get("/runs/bulk/cancel", params={"flow": "pipeline"}).text
    assert "Cancel 3 started runs?" in confirm
    assert _statuses(engine) == {"started": 4}  # nothing done yet
    fields = _hidden(confirm)
    assert fields["flow"] == "pipeline"
    assert fields["expected"] == "3"

    without_token = client.post("/runs/bulk/cancel", data={"flow": "pipeline"})
    assert without_token.status_code == 403
    done = client.post("/runs/bulk/cancel", data=fields)
    assert done.status_code == 200
    assert re.search(r'id="bulk-done">3<', done.text)
    assert _statuses(engine) == {"cancelled": 3, "started": 1}  # the fanout run is untouched


def test_bulk_retry_retries_failed_runs_not_yet_retried(
    engine: Engine, client: httpx.Client
) -> None:
    failed = [start(engine, "pipeline", {"boom": str(n)}) for n in range(2)]
    for run_id in failed:
        drive(engine, "pipeline", PIPELINE_HANDLERS, run_id)
    retry_run(engine, failed[0])
    confirm = client.get("/runs/bulk/retry", params={"status": "failed"}).text
    assert "Retry 1 failed runs?" in confirm
    assert str(failed[1]) in confirm
    assert str(failed[0]) not in confirm
    done = client.post("/runs/bulk/retry", data=_hidden(confirm))
    assert re.search(r'id="bulk-done">1<', done.text)
    assert _statuses(engine) == {"failed": 2, "started": 2}
    nothing = client.get("/runs/bulk/retry", params={"status": "failed"}).text
    assert "Nothing to do" in nothing


def test_bulk_actions_are_absent_and_refused_when_read_only(engine: Engine) -> None:
    start(engine, "pipeline", {"n": 1})
    with http_client(create_app(engine, read_only=True)) as client:
        assert "runs/bulk" not in client.get("/runs").text
        assert client.get("/runs/bulk/cancel").status_code == 403
        assert client.post("/runs/bulk/cancel", data={}).status_code == 403
        assert client.get("/schedules").status_code == 200
        assert "actions/pause" not in client.get("/schedules").text
    assert _statuses(engine) == {"started": 1}


def test_schedules_page_lists_state_next_fire_and_last_run_and_acts(
    engine: Engine, client: httpx.Client
) -> None:
    create_schedule(engine, Pipeline, Cron("0 3 * * *", name="nightly", input={"n": 0}))
    page = client.get("/schedules").text
    name, flow, cron, state, next_fire, last_fire, last_run, _ = row_cells(
        page, "data-schedule", "nightly"
    )
    assert (name, flow, cron, state, last_fire, last_run) == (
        "nightly",
        "pipeline",
        "0 3 * * *",
        "active",
        "never",
        "",
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\d 03:00:00\.000", next_fire)

    confirm = client.get("/schedules/nightly/actions/pause").text
    assert "Pause this schedule?" in confirm
    assert get_schedule(engine, "nightly").paused is False
    paused = client.post("/schedules/nightly/actions/pause", data=_hidden(confirm))
    assert paused.status_code == 303
    assert get_schedule(engine, "nightly").paused is True
    page = client.get("/schedules").text
    cells = row_cells(page, "data-schedule", "nightly")
    assert cells[3].startswith("paused")
    assert cells[4] == "\N{EN DASH}"  # a paused schedule has no next fire
    assert 'data-action="resume"' in page
    assert 'data-action="pause"' not in page

    confirm = client.get("/schedules/nightly/actions/trigger").text
    triggered = client.post("/schedules/nightly/actions/trigger", data=_hidden(confirm))
    assert triggered.status_code == 303
    run_path = triggered.headers["location"]
    assert run_path.startswith("/runs/")
    cells = row_cells(client.get("/schedules").text, "data-schedule", "nightly")
    assert cells[6] == f"{run_path.removeprefix('/runs/')[:8]} started"
    # The runs list names the schedule that started a run.
    listed = client.get("/runs").text
    assert row_cells(listed, "data-run-id", run_path.removeprefix("/runs/"))[5] == (
        "schedule nightly"
    )
    assert client.get("/schedules/nope/actions/pause").status_code == 404


def test_runs_list_notes_retries_and_cancel_reasons(engine: Engine, client: httpx.Client) -> None:
    run_id = start(engine, "pipeline", {"n": 1})
    cancel_run(engine, run_id, reason="wrong input")
    retried = retry_run(engine, run_id).new_run_id
    listed = client.get("/runs").text
    assert row_cells(listed, "data-run-id", str(run_id))[2:] != []
    assert row_cells(listed, "data-run-id", str(run_id))[5] == "wrong input"
    assert row_cells(listed, "data-run-id", str(retried))[5] == f"retry of {str(run_id)[:8]}"


def test_task_output_is_labelled_and_map_boxes_say_map_once(
    engine: Engine, client: httpx.Client
) -> None:
    run_id = start(engine, "fanout", [1, 2, 3])
    drive(engine, "fanout", FANOUT_HANDLERS, run_id)
    page = client.get(f"/runs/{run_id}").text
    assert 'class="muted small task-output">output:' in page
    flow_page = client.get("/flows/fanout").text
    assert "map · map" not in flow_page
    assert re.search(r'class="sub"[^>]*>map</text>', flow_page)


def test_favicon_is_served(client: httpx.Client) -> None:
    page = client.get("/").text
    assert 'rel="icon"' in page
    icon = client.get("/favicon.ico", follow_redirects=True)
    assert icon.status_code == 200
    assert icon.headers["content-type"].startswith("image/svg+xml")


def test_map_progress_is_an_event_before_the_step_ends(engine: Engine) -> None:
    """extension/0055: a running map step crossing a 2 % bucket of its tasks sends an event."""
    run_id = start(engine, "fanout", list(range(100)))
    worker_id = sql_only_flow.register_worker(engine, "fanout", "progress_events")
    with (
        serving(create_app(engine)) as base_url,
        httpx.Client(base_url=base_url, timeout=60) as http,
        http.stream("GET", f"/runs/{run_id}/events") as stream,
    ):
        lines = stream.iter_lines()
        assert next(lines) == "event: ready"
        assert sql_only_flow.work_once(engine, "fanout", FANOUT_HANDLERS, worker_id) == 10
        deadline = time.monotonic() + 60  # heartbeats every 15 s keep the loop turning
        progress = None
        for line in lines:
            if time.monotonic() > deadline:
                break
            if line.startswith("data: ") and line != "data: {}":
                event = json.loads(line.removeprefix("data: "))
                if event.get("event") == "step:square:progress":
                    progress = event
                    break
        assert progress is not None, "no progress event within 60 s"
        assert 90 <= progress["remaining_tasks"] < 100
        assert progress["initial_tasks"] == 100


def test_map_progress_sends_at_most_one_event_per_two_percent(engine: Engine) -> None:
    run_id = start(engine, "fanout", list(range(1000)))
    worker_id = sql_only_flow.register_worker(engine, "fanout", "progress_count")
    with engine.connect() as listener:
        listener.execute(sa.text("LISTEN pgflow"))
        listener.commit()
        while sql_only_flow.work_once(engine, "fanout", FANOUT_HANDLERS, worker_id):
            pass
        listener.execute(sa.text("SELECT 1"))
        raw = listener.connection.dbapi_connection
        assert raw is not None
        notifies = [json.loads(n.payload) for n in raw.notifies(timeout=1, stop_after=10_000)]
    progress = [n for n in notifies if n.get("event") == "step:square:progress"]
    assert 40 <= len(progress) <= 50, len(progress)
    assert all(n["run_id"] == str(run_id) for n in progress)


def test_step_tasks_filter_by_status_and_jump_to_an_index(
    engine: Engine, client: httpx.Client
) -> None:
    run_id = start(engine, "fanout", list(range(30)))
    drive(engine, "fanout", FANOUT_HANDLERS, run_id)
    url = f"/runs/{run_id}/steps/square/tasks"
    jumped = client.get(url, params={"from": 25}).text
    assert re.findall(r'data-task="square/(\d+)"', jumped) == ["25", "26", "27", "28", "29"]
    assert "No failed tasks" in client.get(url, params={"status": "failed"}).text
    assert client.get(url, params={"status": "nope"}).status_code == 400
    assert client.get(url, params={"from": "x"}).status_code == 400
