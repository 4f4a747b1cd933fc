"""Waiting steps in the dashboard (pgflow/dashboard/_waits.py): the run page and the list show
what waits since when and until when; the signal form is CSRF-checked, refuses what is not JSON
or what the database refuses with a message, and is absent and refused in read-only mode."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from markupsafe import escape
from sqlalchemy.engine import Engine

from pgflow import Flow, signal, start_flow, step, subflow, wait_step
from pgflow.dashboard import DashboardSettings, create_app
from pgflow.operations import cancel_run
from tests.helpers.dashboard import http_client, register, row_cells


class Approval(Flow, slug="dash_approval"):
    @wait_step(timeout=timedelta(days=3), on_timeout="skip")
    def approval(self) -> None: ...

    @step(depends_on=[approval])
    def pay(self, deps: dict[str, Any]) -> Any:
        return deps["approval"]


class Forever(Flow, slug="dash_forever"):
    @wait_step
    def webhook(self) -> None: ...


@pytest.fixture
def engine(pgflow_engine: Engine) -> Engine:
    register(pgflow_engine, Approval, Forever)
    return pgflow_engine


@pytest.fixture
def client(engine: Engine) -> Iterator[httpx.Client]:
    with http_client(create_app(engine)) as test_client:
        yield test_client


def _token(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match is not None, "no form on the page"
    return match.group(1)


def _step_state(engine: Engine, run_id: object, step_slug: str) -> tuple[str, Any]:
    with engine.connect() as connection:
        row = connection.execute(
            sa.text(
                "SELECT ss.status, t.output FROM pgflow.step_states ss"
                " JOIN pgflow.step_tasks t USING (run_id, step_slug)"
                " WHERE ss.run_id = :run AND ss.step_slug = :step"
            ),
            {"run": run_id, "step": step_slug},
        ).one()
    return str(row[0]), row[1]


def test_run_page_and_list_show_the_wait_since_and_until(
    engine: Engine, client: httpx.Client
) -> None:
    waiting = start_flow(engine, Approval, {"order": 1})
    forever = start_flow(engine, Forever, None)
    page = client.get(f"/runs/{waiting}").text
    cells = row_cells(page, "data-wait", "approval")
    assert cells[0] == "approval"
    assert cells[1] == "a signal"
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \(.* ago\)", cells[2]), cells
    assert re.match(r"\d{4}-\d\d-\d\d .* \(in (2\.9|3\.0)d\)", cells[3]), cells
    assert cells[4] == "the step is skipped"
    assert f"/runs/{waiting}/steps/approval/signal" in page
    assert "no timeout" in row_cells(client.get(f"/runs/{forever}").text, "data-wait", "webhook")

    listed = client.get("/waits").text
    assert re.search(r'id="waiting-count">2<', listed)
    assert row_cells(listed, "data-wait", f"{waiting}/approval")[:4] == [
        str(waiting),
        "dash_approval",
        "approval",
        "a signal",
    ]
    only = client.get("/waits", params={"flow": "dash_forever"}).text
    assert re.search(r'id="waiting-count">1<', only)
    assert f"{forever}/webhook" in only
    assert f"{waiting}/approval" not in only

    # Once signalled, the wait is gone from both.
    signal(engine, waiting, "approval", {"ok": True})
    assert 'data-wait="approval"' not in client.get(f"/runs/{waiting}").text
    assert f"{waiting}/approval" not in client.get("/waits").text


def test_the_waits_list_pages_by_keyset(engine: Engine) -> None:
    runs = [start_flow(engine, Forever, {"n": n}) for n in range(5)]
    with http_client(create_app(engine, settings=DashboardSettings(page_size=2))) as client:
        seen: list[str] = []
        address = "/waits"
        while address:
            page = client.get(address).text
            seen += re.findall(r'data-wait="([0-9a-f-]+)/webhook"', page)
            more = re.search(r'class="next" href="\?([^"]+)"', page)
            address = f"/waits?{more.group(1).replace('&amp;', '&')}" if more else ""
    assert sorted(seen) == sorted(str(r) for r in runs)


def test_the_signal_form_completes_the_step_with_the_typed_json(
    engine: Engine, client: httpx.Client
) -> None:
    run_id = start_flow(engine, Approval, {"order": 2})
    form = client.get(f"/runs/{run_id}/steps/approval/signal")
    assert form.status_code == 200
    assert 'id="wait-summary"' in form.text
    assert "then the step is skipped" in form.text
    sent = client.post(
        f"/runs/{run_id}/steps/approval/signal",
        data={"csrf_token": _token(form.text), "output": '{"approved": true, "note": "ok"}'},
        follow_redirects=False,
    )
    assert sent.status_code == 303
    assert sent.headers["location"].endswith(f"/runs/{run_id}#step-approval")
    assert _step_state(engine, run_id, "approval") == (
        "completed",
        {"approved": True, "note": "ok"},
    )
    # The form of a step that no longer waits says so and offers nothing to send.
    after = client.get(f"/runs/{run_id}/steps/approval/signal").text
    assert 'id="signal-not-waiting"' in after
    assert "<textarea" not in after


@pytest.mark.parametrize(
    ("typed", "message"),
    [
        ("{approved: true}", "not JSON: Expecting property name enclosed in double quotes"),
        ("", "the output is empty"),
        ("NaN", "NaN is not JSON"),
        ('{"a": 1} trailing', "not JSON: Extra data at line 1, column 10"),
    ],
)
def test_output_that_is_not_json_is_refused_with_the_text_kept(
    engine: Engine, client: httpx.Client, typed: str, message: str
) -> None:
    run_id = start_flow(engine, Approval, {"order": 3})
    token = _token(client.get(f"/runs/{run_id}/steps/approval/signal").text)
    refused = client.post(
        f"/runs/{run_id}/steps/approval/signal", data={"csrf_token": token, "output": typed}
    )
    assert refused.status_code == 400
    assert message in refused.text
    assert f">{escape(typed)}</textarea>" in refused.text
    assert _step_state(engine, run_id, "approval") == ("started", None)


def test_a_signal_the_database_refuses_shows_why(engine: Engine, client: httpx.Client) -> None:
    run_id = start_flow(engine, Approval, {"order": 4})
    token = _token(client.get(f"/runs/{run_id}/steps/approval/signal").text)
    # Not a wait step: pay runs a handler.
    refused = client.post(
        f"/runs/{run_id}/steps/pay/signal", data={"csrf_token": token, "output": "1"}
    )
    assert refused.status_code == 409
    assert "only steps declared with @wait_step take signals" in refused.text
    # Too late: the run ended (cancelled here).
    cancel_run(engine, run_id, reason="test")
    late = client.post(
        f"/runs/{run_id}/steps/approval/signal", data={"csrf_token": token, "output": "1"}
    )
    assert late.status_code == 409
    assert 'id="signal-error"' in late.text
    assert "failed" in late.text
    assert _step_state(engine, run_id, "approval")[1] is None


def test_a_repeated_signal_says_the_first_one_counts(engine: Engine, client: httpx.Client) -> None:
    run_id = start_flow(engine, Approval, {"order": 5})
    token = _token(client.get(f"/runs/{run_id}/steps/approval/signal").text)
    signal(engine, run_id, "approval", "first")
    again = client.post(
        f"/runs/{run_id}/steps/approval/signal", data={"csrf_token": token, "output": '"second"'}
    )
    assert again.status_code == 200
    assert "the first signal counts, this one changed nothing" in again.text
    assert _step_state(engine, run_id, "approval") == ("completed", "first")


def test_the_signal_form_is_csrf_checked(engine: Engine, client: httpx.Client) -> None:
    run_id = start_flow(engine, Approval, {"order": 6})
    client.get(f"/runs/{run_id}/steps/approval/signal")  # sets the CSRF cookie
    forged = client.post(
        f"/runs/{run_id}/steps/approval/signal", data={"csrf_token": "x" * 43, "output": "1"}
    )
    assert forged.status_code == 403
    token = _token(client.get(f"/runs/{run_id}/steps/approval/signal").text)
    other_site = client.post(
        f"/runs/{run_id}/steps/approval/signal",
        data={"csrf_token": token, "output": "1"},
        headers={"origin": "https://evil.example"},
    )
    assert other_site.status_code == 403
    too_big = client.post(
        f"/runs/{run_id}/steps/approval/signal",
        data={"csrf_token": token, "output": '"' + "x" * 300_000 + '"'},
    )
    assert too_big.status_code == 413
    assert _step_state(engine, run_id, "approval") == ("started", None)


def test_read_only_shows_the_wait_but_no_signal_and_refuses_one(engine: Engine) -> None:
    run_id = start_flow(engine, Approval, {"order": 7})
    with http_client(create_app(engine, read_only=True)) as client:
        page = client.get(f"/runs/{run_id}").text
        assert 'data-wait="approval"' in page
        assert "/signal" not in page
        assert "Send signal" not in page
        listed = client.get("/waits").text
        assert f"{run_id}/approval" in listed
        assert "/signal" not in listed
        assert client.get(f"/runs/{run_id}/steps/approval/signal").status_code == 403
        posted = client.post(f"/runs/{run_id}/steps/approval/signal", data={"output": "1"})
        assert posted.status_code == 403
    assert _step_state(engine, run_id, "approval") == ("started", None)


class Child(Flow, slug="dash_child"):
    @wait_step
    def ok(self) -> None: ...


class Parent(Flow, slug="dash_parent"):
    @wait_step
    def items(self) -> None: ...

    @subflow(Child, array=items)
    def kids(self, item: int) -> dict[str, Any]:
        return {"item": item}


def parent_waiting_on_children(engine: Engine) -> tuple[uuid.UUID, list[uuid.UUID]]:
    """A Parent run whose step ``kids`` waits for 3 children: the first completed, the second
    running (waiting for its own signal), the third not started yet. No worker: the children are
    started as the subflow starter starts them (``pgflow_python.start_child``)."""
    register(engine, Child, Parent)
    parent = start_flow(engine, Parent, None)
    signal(engine, parent, "items", [1, 2, 3])
    children = []
    with engine.begin() as connection:
        for index in (0, 1):
            children.append(
                connection.execute(
                    sa.text(
                        "SELECT child_run_id FROM pgflow_python.start_child("
                        ":run, 'kids', :index, CAST(:input AS jsonb))"
                    ),
                    {"run": parent, "index": index, "input": f'{{"item": {index + 1}}}'},
                ).scalar_one()
            )
    signal(engine, children[0], "ok", "paid")  # the child completes: its parent task too
    return parent, children


def test_a_subflow_step_waiting_for_its_children_is_listed_with_links_and_no_form(
    engine: Engine, client: httpx.Client
) -> None:
    parent, (done, running) = parent_waiting_on_children(engine)
    waiting_for = "3 child runs (1 done, 1 not started yet)"

    listed = client.get("/waits").text
    assert re.search(r'id="waiting-count">2<', listed)  # the parent's step, the child's wait
    cells = row_cells(listed, "data-wait", f"{parent}/kids")
    assert cells[:3] == [str(parent), "dash_parent", "kids"]
    assert cells[3] == f"{waiting_for} {str(done)[:8]} {str(running)[:8]}"
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \(.* ago\)", cells[4]), cells
    assert cells[5] == "no timeout: its child runs end it"
    assert cells[6] == ""  # no Send signal
    assert f'href="/runs/{done}"' in listed
    assert f'href="/runs/{running}"' in listed
    assert row_cells(listed, "data-wait", f"{running}/ok")[3] == "a signal"
    assert f"/runs/{parent}/steps/kids/signal" not in listed
    only = client.get("/waits", params={"flow": "dash_parent"}).text
    assert re.search(r'id="waiting-count">1<', only)

    page = client.get(f"/runs/{parent}").text
    cells = row_cells(page, "data-wait", "kids")
    assert cells[1] == f"{waiting_for} {str(done)[:8]} {str(running)[:8]}"
    assert cells[2:4] == [cells[2], "no timeout: its child runs end it"]
    assert 'data-signal="kids"' not in page
    form = client.get(f"/runs/{parent}/steps/kids/signal").text
    assert 'id="signal-subflow"' in form
    assert "<textarea" not in form

    # Once every child ended, the step no longer waits.
    with engine.begin() as connection:
        connection.execute(
            sa.text("SELECT pgflow_python.start_child(:run, 'kids', 2, CAST('{}' AS jsonb))"),
            {"run": parent},
        )
    signal(engine, running, "ok", "paid")
    assert "3 child runs (2 done)" in client.get("/waits").text
    [last] = [r for r in _children(engine, parent) if r not in (done, running)]
    signal(engine, last, "ok", "paid")
    assert f"{parent}/kids" not in client.get("/waits").text
    assert 'data-wait="kids"' not in client.get(f"/runs/{parent}").text
    with engine.connect() as connection:
        kids = connection.execute(
            sa.text(
                "SELECT status FROM pgflow.step_states WHERE run_id = :run AND step_slug = 'kids'"
            ),
            {"run": parent},
        ).scalar_one()
    assert kids == "completed"


def _children(engine: Engine, parent: uuid.UUID) -> list[uuid.UUID]:
    with engine.connect() as connection:
        return list(
            connection.execute(
                sa.text(
                    "SELECT run_id FROM pgflow_python.run_parents"
                    " WHERE parent_run_id = :run ORDER BY parent_task_index"
                ),
                {"run": parent},
            ).scalars()
        )
