"""The dashboard's routes against a real database: an HTTP client on the ASGI app."""

from __future__ import annotations

import html
import json
import re
import uuid
from collections.abc import Iterator
from datetime import timedelta

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.routing import Mount

from pgflow.dashboard import BasicAuth, DashboardSettings, TokenAuth, create_app
from pgflow.dashboard._actions import RunAction
from pgflow.dashboard._app import Dashboard, build_app
from pgflow.dashboard._security import SecurityHeadersMiddleware
from pgflow.operations import cancel_run, resume_run
from tests.helpers.dashboard import (
    FANOUT_HANDLERS,
    PIPELINE_HANDLERS,
    XSS,
    Fanout,
    Pipeline,
    drive,
    fail_with_record,
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


def test_overview_counts_runs_per_flow_and_job(engine: Engine, client: httpx.Client) -> None:
    for value in range(3):
        drive(engine, "pipeline", PIPELINE_HANDLERS, start(engine, "pipeline", {"n": value}))
    drive(engine, "pipeline", PIPELINE_HANDLERS, start(engine, "pipeline", {"boom": "bad"}))
    start(engine, "pipeline", {"n": "still queued"})
    # Two operator cancels are not failures: counted apart, outside the failure rate.
    for _ in range(2):
        cancel_run(engine, start(engine, "pipeline", {"n": "cancelled"}))

    page = client.get("/").text

    cells = row_cells(page, "data-flow", "pipeline")
    flow, started, running, completed, failed, cancelled, rate = cells[:7]
    assert (flow, started, running, completed, failed, cancelled, rate) == (
        "pipeline",
        "7",
        "1",
        "3",
        "1",
        "2",
        "25.0 %",
    )
    # The queue still holds the started run's first task.
    queue, waiting = row_cells(page, "data-flow", "pipeline")[9:11]
    assert (queue, waiting) == ("1", "1")
    assert row_cells(page, "data-flow", "fanout")[1] == "0"
    # The chart has a bar for the hour in which the runs ended.
    assert 'class="bar-completed"' in page
    assert 'class="bar-failed"' in page
    assert 'class="bar-cancelled"' in page


def test_runs_list_filters_and_pages_newest_first(engine: Engine) -> None:
    run_ids = [start(engine, "pipeline", {"n": n}) for n in range(7)]
    failed = start(engine, "pipeline", {"boom": "x"})
    drive(engine, "pipeline", PIPELINE_HANDLERS, failed)
    map_run = start(engine, "fanout", [1, 2])
    # Spread the start times one minute apart, oldest first, so the order is known.
    with engine.begin() as connection:
        for minutes, run_id in enumerate([*run_ids, failed, map_run]):
            connection.execute(
                sa.text(
                    "UPDATE pgflow.runs SET started_at = now() - interval '1 hour'"
                    " + make_interval(mins => :m) WHERE run_id = :id"
                ),
                {"m": minutes, "id": run_id},
            )
    app = create_app(engine, settings=DashboardSettings(page_size=3))
    with http_client(app) as client:
        seen: list[str] = []
        url: str | None = "/runs?flow=pipeline"
        while url is not None:
            page = client.get(url).text
            seen += re.findall(r'<tr data-run-id="([0-9a-f-]+)">', page)
            more = re.search(r'<a class="next" href="\?([^"]+)"', page)
            url = "/runs?" + html.unescape(more.group(1)) if more else None
        assert seen == [str(r) for r in [failed, *reversed(run_ids)]]

        failed_page = client.get("/runs", params={"status": "failed"}).text
        assert re.findall(r'<tr data-run-id="([0-9a-f-]+)">', failed_page) == [str(failed)]

        prefix = str(map_run)[:8]
        found = client.get("/runs", params={"q": prefix}).text
        assert str(map_run) in re.findall(r'<tr data-run-id="([0-9a-f-]+)">', found)

        whole = client.get("/runs", params={"q": str(map_run).upper()}, follow_redirects=False)
        assert whole.status_code == 303
        assert whole.headers["location"] == f"/runs/{map_run}"

        assert client.get("/runs", params={"status": "running"}).status_code == 400
        assert "hexadecimal" in client.get("/runs", params={"q": "not-a-uuid!"}).text


def test_runs_time_window(engine: Engine, client: httpx.Client) -> None:
    old = start(engine, "pipeline", {"n": "old"})
    new = start(engine, "pipeline", {"n": "new"})
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "UPDATE pgflow.runs SET started_at = TIMESTAMPTZ '2026-01-01 10:00Z'"
                " WHERE run_id = :id"
            ),
            {"id": old},
        )
    page = client.get("/runs", params={"since": "2026-01-01T09:00", "until": "2026-01-01T11:00"})
    assert re.findall(r'<tr data-run-id="([0-9a-f-]+)">', page.text) == [str(old)]
    assert str(new) not in page.text
    assert client.get("/runs", params={"since": "yesterday"}).status_code == 400


def test_run_detail_shows_dag_states_outputs_and_error(
    engine: Engine, client: httpx.Client
) -> None:
    done = start(engine, "pipeline", {"n": 1})
    drive(engine, "pipeline", PIPELINE_HANDLERS, done)
    page = client.get(f"/runs/{done}").text
    for slug in ("fetch", "left", "right", "join"):
        assert f'data-step="{slug}" data-status="completed"' in page
    assert page.count('class="edge"') == 4
    assert 'data-live="no"' in page  # an ended run needs no live updates

    failed = start(engine, "pipeline", {"boom": "disk full"})
    drive(engine, "pipeline", PIPELINE_HANDLERS, failed)
    page = client.get(f"/runs/{failed}").text
    assert 'data-step="fetch" data-status="failed"' in page
    assert 'data-step="join" data-status="created"' in page
    assert "RuntimeError: disk full" in page

    running = start(engine, "pipeline", {"n": 2})
    page = client.get(f"/runs/{running}").text
    assert 'data-live="yes"' in page
    assert f'data-events="/runs/{running}/events"' in page
    assert client.get(f"/runs/{uuid.uuid4()}").status_code == 404
    assert client.get("/runs/not-a-uuid").status_code == 404


def test_every_value_is_escaped(engine: Engine, client: httpx.Client) -> None:
    """A script in an input, an output or an error renders as text, never as markup."""
    run_id = start(engine, "pipeline", {"boom": XSS, "note": XSS})
    drive(engine, "pipeline", PIPELINE_HANDLERS, run_id)
    echoed = start(engine, "pipeline", {"note": XSS})
    drive(engine, "pipeline", PIPELINE_HANDLERS, echoed)

    for path in (f"/runs/{run_id}", f"/runs/{echoed}", f"/runs/{run_id}/live"):
        page = client.get(path).text
        assert "<script>alert" not in page
        assert "&lt;script&gt;alert(" in page
    error = client.get(f"/runs/{run_id}/tasks/fetch/0/error")
    assert error.headers["content-type"].startswith("text/plain")
    assert error.headers["x-content-type-options"] == "nosniff"
    assert "script-src 'self'" in error.headers["content-security-policy"]


def test_large_values_are_cut_with_a_link_to_the_whole(engine: Engine) -> None:
    big = {"blob": "x" * 5000}
    run_id = start(engine, "pipeline", big)
    drive(engine, "pipeline", PIPELINE_HANDLERS, run_id)
    app = create_app(engine, settings=DashboardSettings(preview_chars=100))
    with http_client(app) as client:
        page = client.get(f"/runs/{run_id}").text
        assert "x" * 5000 not in page
        assert f'href="/runs/{run_id}/value/input">show all' in page
        assert f"/runs/{run_id}/tasks/join/0/output" in page
        assert client.get(f"/runs/{run_id}/value/input").json() == big
        assert client.get(f"/runs/{run_id}/value/output").json() == {"join": big}
        assert client.get(f"/runs/{run_id}/tasks/join/0/output").json() == big
        assert client.get(f"/runs/{run_id}/value/secret").status_code == 404
        assert client.get(f"/runs/{run_id}/tasks/join/7/output").status_code == 404


def test_map_steps_are_collapsed_with_counts_and_paged(engine: Engine) -> None:
    run_id = start(engine, "fanout", list(range(12)))
    drive(engine, "fanout", FANOUT_HANDLERS, run_id)
    app = create_app(engine, settings=DashboardSettings(tasks_per_step=5, page_size=4))
    with http_client(app) as client:
        page = client.get(f"/runs/{run_id}").text
        summary = re.search(
            r'<details class="map-tasks" data-step="square"[^>]*>(.*?)</details>', page, re.DOTALL
        )
        assert summary is not None
        assert "12 completed" in summary.group(1)
        assert summary.group(1).count('data-task="square/') == 5
        assert f"/runs/{run_id}/steps/square/tasks?after=4" in summary.group(1)
        assert "completed · 12/12" in page  # the DAG node's label
        # Upstream keeps no task input; the page says where each task's input came from.
        assert "element 3 of the run's input" in summary.group(1)
        assert re.search(r"input:\s*<a href=\"#step-square\">square</a>'s output", page)

        indexes: list[str] = []
        url: str | None = f"/runs/{run_id}/steps/square/tasks?after=4"
        while url is not None:
            tasks_page = client.get(url).text
            indexes += re.findall(r'data-task="square/(\d+)"', tasks_page)
            more = re.search(r'<a class="next" href="\?after=(\d+)"', tasks_page)
            url = f"/runs/{run_id}/steps/square/tasks?after={more.group(1)}" if more else None
        assert indexes == [str(i) for i in range(5, 12)]


def test_flows_page_and_flow_dag(engine: Engine, client: httpx.Client) -> None:
    drive(engine, "fanout", FANOUT_HANDLERS, start(engine, "fanout", [3]))
    flows = client.get("/flows").text
    assert row_cells(flows, "data-flow", "pipeline")[1:4] == ["flow", "4", "0"]
    assert row_cells(flows, "data-flow", "fanout")[2:4] == ["2", "1"]
    assert "completed" in row_cells(flows, "data-flow", "fanout")[7]

    fanout = client.get("/flows/fanout").text
    assert 'class="node node-none node-map" data-step="square"' in fanout
    assert 'class="map-shadow"' in fanout
    assert 'data-from="square" data-to="total"' in fanout
    assert len(re.findall(r"<tr data-run-id=", fanout)) == 1
    assert client.get("/flows/nope").status_code == 404


def test_workers_page_states_and_tasks_done(engine: Engine, client: httpx.Client) -> None:
    run_id = start(engine, "pipeline", {"n": 1})
    drive(engine, "pipeline", PIPELINE_HANDLERS, run_id)
    with engine.begin() as connection:
        worker = connection.execute(
            sa.text("SELECT worker_id FROM pgflow.workers WHERE queue_name = 'pipeline'")
        ).scalar_one()
        stale, stopped = uuid.uuid4(), uuid.uuid4()
        connection.execute(
            sa.text(
                "INSERT INTO pgflow.workers (worker_id, queue_name, function_name,"
                " last_heartbeat_at, deprecated_at) VALUES"
                " (:stale, 'fanout', 'old', now() - interval '5 minutes', NULL),"
                " (:stopped, 'fanout', 'gone', now() - interval '1 minute', now())"
            ),
            {"stale": stale, "stopped": stopped},
        )
    page = client.get("/workers").text
    state, _, flow, *_, done = row_cells(page, "data-worker", str(worker))
    assert (state, flow, done) == ("alive", "pipeline", "4")
    assert row_cells(page, "data-worker", str(stale))[0] == "stale"
    assert row_cells(page, "data-worker", str(stopped))[0] == "stopped"
    overview = client.get("/").text
    assert re.search(r'id="workers-alive">1<', overview)


def test_workers_page_is_keyset_paged(engine: Engine) -> None:
    with engine.begin() as connection:
        for minutes in range(5):
            connection.execute(
                sa.text(
                    "INSERT INTO pgflow.workers (worker_id, queue_name, function_name,"
                    " last_heartbeat_at) VALUES (:id, 'pipeline', 'w', now() - :ago)"
                ),
                {"id": uuid.uuid4(), "ago": timedelta(minutes=minutes)},
            )
    with http_client(create_app(engine, settings=DashboardSettings(page_size=2))) as client:
        seen: list[str] = []
        url: str | None = "/workers"
        while url is not None:
            page = client.get(url).text
            seen += re.findall(r'<tr data-worker="([0-9a-f-]+)">', page)
            more = re.search(r'<a class="next" href="\?([^"]+)"', page)
            url = "/workers?" + html.unescape(more.group(1)) if more else None
        assert len(seen) == len(set(seen)) == 5


def test_token_auth(engine: Engine) -> None:
    token = "t" * 24
    with http_client(create_app(engine, auth=TokenAuth(token))) as client:
        refused = client.get("/")
        assert refused.status_code == 401
        assert "content-security-policy" in refused.headers
        assert client.get("/", headers={"authorization": "Bearer wrong"}).status_code == 401
        assert client.get("/", headers={"authorization": f"Bearer {token}"}).status_code == 200
        exchanged = client.get(f"/runs?token={token}&status=failed", follow_redirects=False)
        assert exchanged.status_code == 303
        assert exchanged.headers["location"] == "/runs?status=failed"
        assert "httponly" in exchanged.headers["set-cookie"].lower()
        assert client.get("/runs").status_code == 200  # the cookie now carries the token
    with pytest.raises(ValueError, match="16 characters"):
        TokenAuth("short")


def test_basic_auth(engine: Engine) -> None:
    with http_client(create_app(engine, auth=BasicAuth("ada", "s3cret!"))) as client:
        refused = client.get("/flows")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Basic")
        assert client.get("/flows", auth=("ada", "wrong")).status_code == 401
        assert client.get("/flows", auth=("ada", "s3cret!")).status_code == 200


def test_mounted_in_another_app_links_carry_the_prefix(engine: Engine) -> None:
    run_id = start(engine, "pipeline", {"n": 1})
    host = Starlette(routes=[Mount("/ops/pgflow", app=create_app(engine))])
    with http_client(host) as client:
        page = client.get("/ops/pgflow/runs").text
        assert f'href="/ops/pgflow/runs/{run_id}"' in page
        assert 'href="/ops/pgflow/static/dashboard.css"' in page
        assert client.get("/ops/pgflow/static/dashboard.js").status_code == 200
        detail = client.get(f"/ops/pgflow/runs/{run_id}").text
        assert f'data-live-src="/ops/pgflow/runs/{run_id}/live"' in detail


def test_events_stream_tells_of_the_runs_transitions(engine: Engine) -> None:
    """Server-sent events are fed by LISTEN on the realtime shim's channel."""
    run_id = start(engine, "pipeline", {"n": 1})
    with (
        serving(create_app(engine)) as base_url,
        httpx.Client(base_url=base_url, timeout=60) as http,
        http.stream("GET", f"/runs/{run_id}/events") as stream,
    ):
        assert stream.headers["content-type"].startswith("text/event-stream")
        lines = stream.iter_lines()
        assert next(lines) == "event: ready"
        drive(engine, "pipeline", PIPELINE_HANDLERS, run_id)
        events = []
        for line in lines:
            if line.startswith("data: ") and line != "data: {}":
                event = json.loads(line.removeprefix("data: "))
                events.append(event.get("event"))
                if event.get("event") == "run:completed":
                    break
        assert "step:fetch:completed" in events
        assert events[-1] == "run:completed"


def _csrf_token(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match is not None, "no action form on the page"
    return match.group(1)


def test_actions_post_with_csrf_and_are_refused_without(engine: Engine) -> None:
    """The action plumbing, with a recording action standing in for run control."""
    performed: list[uuid.UUID] = []

    def record(_engine: Engine, run_id: uuid.UUID) -> uuid.UUID | None:
        performed.append(run_id)
        return None

    actions = {"poke": RunAction("poke", "Poke", lambda run: run["status"] == "started", record)}
    run_id = start(engine, "pipeline", {"n": 1})
    app = SecurityHeadersMiddleware(build_app(Dashboard(engine, DashboardSettings(), actions)))
    with http_client(app) as client:
        page = client.get(f"/runs/{run_id}").text
        # The run page's button asks first: a confirmation page holds the POST form.
        assert f'action="/runs/{run_id}/actions/poke"' in page
        assert 'name="csrf_token"' not in page
        confirm = client.get(f"/runs/{run_id}/actions/poke").text
        assert 'data-confirm="poke"' in confirm
        assert performed == []
        token = _csrf_token(confirm)
        url = f"/runs/{run_id}/actions/poke"
        assert client.post(url, data={}).status_code == 403
        assert client.post(url, data={"csrf_token": "forged"}).status_code == 403
        cross_site = client.post(
            url, data={"csrf_token": token}, headers={"origin": "https://evil.example"}
        )
        assert cross_site.status_code == 403
        assert performed == []
        done = client.post(
            url, data={"csrf_token": token}, headers={"origin": str(client.base_url).rstrip("/")}
        )
        assert done.status_code == 303
        assert done.headers["location"] == f"/runs/{run_id}"
        assert performed == [run_id]
        assert (
            client.post(f"/runs/{run_id}/actions/nope", data={"csrf_token": token}).status_code
            == 404
        )

    read_only = build_app(Dashboard(engine, DashboardSettings(read_only=True), actions))
    with http_client(read_only) as client:
        page = client.get(f"/runs/{run_id}").text
        assert "actions/poke" not in page
        assert "read-only" in page
        assert client.get(f"/runs/{run_id}/actions/poke").status_code == 403
        response = client.post(f"/runs/{run_id}/actions/poke", data={"csrf_token": token})
        assert response.status_code == 403
    assert performed == [run_id]


def test_failed_attempts_show_type_message_and_traceback(engine: Engine) -> None:
    run_id = start(engine, "pipeline", {"n": 1})
    fail_with_record(
        engine,
        "pipeline",
        run_id,
        message=f"ValueError: bad row {XSS}",
        traceback=f'Traceback (most recent call last):\n  File "etl.py", line 3\n{XSS}',
    )
    with http_client(create_app(engine)) as client:
        page = client.get(f"/runs/{run_id}").text
    assert "1 failed attempt<" in page
    assert "ValueError: bad row &lt;script&gt;" in page
    assert "Traceback (most recent call last):\n  File &#34;etl.py&#34;" in page
    assert 'class="attempt-failed"' in page  # the timeline marks when it failed
    assert "<script>alert" not in page


def test_run_control_actions_cancel_and_resume(engine: Engine) -> None:
    run_id = start(engine, "pipeline", {"n": 1})
    with http_client(create_app(engine)) as client:
        page = client.get(f"/runs/{run_id}").text
        assert 'data-action="cancel"' in page
        assert 'data-action="resume"' not in page
        confirm = client.get(f"/runs/{run_id}/actions/cancel").text
        assert "Cancel this run?" in confirm
        token = _csrf_token(confirm)
        cancelled = client.post(f"/runs/{run_id}/actions/cancel", data={"csrf_token": token})
        assert cancelled.status_code == 303
        page = client.get(f"/runs/{run_id}").text
        assert 'id="run-cancelled"' in page
        assert "cancelled from the dashboard" in page
        listed = client.get("/runs", params={"status": "cancelled"}).text
        assert row_cells(listed, "data-run-id", str(run_id))[2] == "cancelled"
        assert str(run_id) not in client.get("/runs", params={"status": "failed"}).text

        resumed = client.post(f"/runs/{run_id}/actions/resume", data={"csrf_token": token})
        assert resumed.status_code == 303
        assert resumed.headers["location"] == f"/runs/{run_id}"
        page = client.get(f"/runs/{run_id}").text
        assert 'data-status="started"' in page
        assert "resumed 1\N{MULTIPLICATION SIGN}" in page


def test_the_run_page_and_list_of_a_resumed_run_leave_out_the_time_it_sat_failed(
    engine: Engine,
) -> None:
    run_id = start(engine, "pipeline", {"boom": "first try"})
    assert drive(engine, "pipeline", PIPELINE_HANDLERS, run_id)["status"] == "failed"
    # It sat failed for an hour before an operator resumed it; the resumed run completes.
    with engine.begin() as connection:
        for table, columns in {
            "runs": ("started_at", "failed_at"),
            "step_states": ("created_at", "started_at", "completed_at", "failed_at"),
            "step_tasks": ("queued_at", "started_at", "completed_at", "failed_at"),
        }.items():
            moved = ", ".join(f"{c} = {c} - interval '1 hour'" for c in columns)
            update = sa.text(f"UPDATE pgflow.{table} SET {moved} WHERE run_id = :id")
            connection.execute(update, {"id": run_id})
    resume_run(engine, run_id)
    handlers = {**PIPELINE_HANDLERS, "fetch": lambda task: "fetched"}
    assert drive(engine, "pipeline", handlers, run_id)["status"] == "completed"

    with http_client(create_app(engine)) as client:
        page = client.get(f"/runs/{run_id}").text
    took = re.search(r'<span id="run-took">([^<]*)</span>', page)
    assert took is not None
    assert re.fullmatch(r"\d+ms|\d+\.\ds", took.group(1)), took.group(1)  # not 60.0m
    # fetch started before the hour and ended after it: its Took column leaves it out too.
    fetch_took = row_cells(page, "data-step", "fetch")[4]
    assert re.fullmatch(r"\d+ms|\d+\.\ds", fetch_took), fetch_took
    # So does its Duration in the list of runs.
    with http_client(create_app(engine)) as client:
        listed = client.get("/runs").text
    listed_took = row_cells(listed, "data-run-id", str(run_id))[4]
    assert re.fullmatch(r"\d+ms|\d+\.\ds", listed_took), listed_took


@pytest.mark.parametrize(
    "path",
    [
        "/runs?flow=%00",
        "/runs?q=%00",
        "/runs?since=%00",
        "/flows/%00",
        "/flows/pipe%00line",
        "/runs/%00",
        "/runs/00000000-0000-0000-0000-000000000000/steps/%00/tasks",
    ],
)
def test_a_nul_in_a_path_or_filter_is_a_400_not_a_500(client: httpx.Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 400, response.text
    assert "NUL" in response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    assert client.get("/runs?flow=pipeline").status_code == 200
