"""The dashboard in a real browser (Debian's chromium through Playwright) on a real database."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect
from sqlalchemy.engine import Engine

from pgflow import Flow, step
from pgflow.dashboard import create_app
from tests.helpers.dashboard import (
    FANOUT_HANDLERS,
    NOTIFY_HANDLERS,
    PIPELINE_HANDLERS,
    XSS,
    Fanout,
    Gated,
    Notify,
    Pipeline,
    drive,
    fail_with_record,
    open_gate,
    register,
    screenshot,
    serving,
    start,
    worker_in_thread,
)

TIMEOUT_MS = 60_000


@pytest.fixture
def engine(pgflow_engine: Engine) -> Engine:
    register(pgflow_engine, Pipeline, Fanout, Gated, Notify)
    return pgflow_engine


@pytest.fixture
def base_url(engine: Engine) -> Iterator[str]:
    with serving(create_app(engine)) as url:
        yield url


def _box_fill(page: Page, step_slug: str) -> str:
    # Waits for a box that is in the document: a live update may be swapping the DAG in, and a
    # detached box has no computed fill ("").
    fill = page.wait_for_function(
        """slug => {
            const box = document.querySelector(`g.node[data-step="${slug}"] rect.box`);
            return (box && box.isConnected && getComputedStyle(box).fill) || null;
        }""",
        arg=step_slug,
    ).json_value()
    assert isinstance(fill, str)
    return fill


def test_overview_renders_with_data(engine: Engine, base_url: str, page: Page) -> None:
    ended = [start(engine, "pipeline", {"n": value}) for value in range(4)]
    ended.append(start(engine, "pipeline", {"boom": "timeout"}))
    for run_id in ended:
        drive(engine, "pipeline", PIPELINE_HANDLERS, run_id)
    drive(engine, "fanout", FANOUT_HANDLERS, start(engine, "fanout", list(range(8))))
    for value in range(3):
        drive(engine, "notify", NOTIFY_HANDLERS, start(engine, "notify", {"to": value}))
    start(engine, "pipeline", {"n": "waiting"})
    # The pipeline's runs ended 0, 2, 4, 6 and 8 hours ago: five bars in the hourly chart.
    with engine.begin() as connection:
        for hours, run_id in enumerate(ended):
            connection.execute(
                sa.text(
                    "UPDATE pgflow.runs SET started_at = started_at - :shift,"
                    " completed_at = completed_at - :shift, failed_at = failed_at - :shift"
                    " WHERE run_id = :id"
                ),
                {"shift": timedelta(hours=2 * hours), "id": run_id},
            )

    page.goto(base_url + "/")

    row = page.locator('#stats-flows tr[data-flow="pipeline"]')
    expect(row).to_be_visible()
    expect(row.locator("td").nth(1)).to_have_text("6")
    expect(row.locator("td").nth(4)).to_have_text("1")
    expect(row.locator("td").nth(5)).to_have_text("0")  # cancelled, apart from failed
    expect(row.locator("td").nth(6)).to_have_text("20.0 %")
    # Four hours with a completed pipeline run, one of them shared with fanout and notify,
    # and the hour of the failed one.
    expect(page.locator("svg.chart rect.bar-completed")).to_have_count(4)
    expect(page.locator("svg.chart rect.bar-failed")).to_have_count(1)
    expect(page.locator('#stats-jobs tr[data-flow="notify"] td').nth(3)).to_have_text("3")
    screenshot(page, "overview")

    page.click('#stats-flows tr[data-flow="fanout"] a')
    expect(page.locator('g.node[data-step="square"] rect.map-shadow')).to_be_visible()
    screenshot(page, "flow")

    page.goto(base_url + "/runs?status=failed")
    expect(page.locator("table.runs tbody tr")).to_have_count(1)
    screenshot(page, "runs")


def test_run_dag_changes_colour_live_while_a_worker_completes_it(
    engine: Engine, base_url: str, page: Page
) -> None:
    with worker_in_thread(engine, Gated):
        run_id = start(engine, "gated", {"url": "https://example.org"})
        page.goto(f"{base_url}/runs/{run_id}")
        # Marks this document: if the page reloaded, the mark would be gone.
        page.evaluate("window.pgflowSameDocument = true")
        fetch = page.locator('g.node[data-step="fetch"]')
        join = page.locator('g.node[data-step="join"]')
        expect(fetch).to_have_attribute("data-status", "started", timeout=TIMEOUT_MS)
        expect(join).to_have_attribute("data-status", "created")
        started_colour, waiting_colour = _box_fill(page, "fetch"), _box_fill(page, "join")
        assert started_colour != waiting_colour

        open_gate("fetch")
        expect(fetch).to_have_attribute("data-status", "completed", timeout=TIMEOUT_MS)
        expect(page.locator('g.node[data-step="left"]')).to_have_attribute(
            "data-status", "started", timeout=TIMEOUT_MS
        )
        completed_colour = _box_fill(page, "fetch")
        assert completed_colour not in (started_colour, waiting_colour)
        screenshot(page, "run-live")

        for gate in ("left", "right", "join"):
            open_gate(gate)
        expect(page.locator("#run-status")).to_have_attribute(
            "data-status", "completed", timeout=TIMEOUT_MS
        )
        expect(join).to_have_attribute("data-status", "completed")
        assert _box_fill(page, "join") == completed_colour
        expect(page.locator("#live")).to_contain_text('"join": 3')
        assert page.evaluate("window.pgflowSameDocument") is True


def test_failed_run_shows_its_error(engine: Engine, base_url: str, page: Page) -> None:
    run_id = start(engine, "pipeline", {"path": "/var/data/export.csv"})
    fail_with_record(
        engine,
        "pipeline",
        run_id,
        message="RuntimeError: the disk is full",
        error_type="RuntimeError",
        traceback=(
            "Traceback (most recent call last):\n"
            '  File "etl.py", line 12, in fetch\n'
            "    sink.write(rows)\n"
            "RuntimeError: the disk is full"
        ),
    )

    page.goto(f"{base_url}/runs/{run_id}")

    expect(page.locator("#run-status")).to_have_attribute("data-status", "failed")
    expect(page.locator('g.node[data-step="fetch"]')).to_have_attribute("data-status", "failed")
    expect(page.locator('table.steps tr[data-step="fetch"] pre.error')).to_contain_text(
        "RuntimeError: the disk is full"
    )
    task = page.locator('tr[data-task="fetch/0"]')
    expect(task.locator("pre.error").first).to_be_visible()
    task.locator("details.attempts summary").click()
    expect(task.locator("details.attempts")).to_contain_text('File "etl.py", line 12')
    screenshot(page, "run-failed")


def test_a_script_in_input_output_or_error_renders_as_text(
    engine: Engine, base_url: str, page: Page
) -> None:
    failed = start(engine, "pipeline", {"boom": XSS})
    drive(engine, "pipeline", PIPELINE_HANDLERS, failed)
    echoed = start(engine, "pipeline", {"note": XSS})
    drive(engine, "pipeline", PIPELINE_HANDLERS, echoed)
    executed: list[str] = []
    page.on("console", lambda message: executed.append(message.text))

    for run_id in (failed, echoed):
        page.goto(f"{base_url}/runs/{run_id}")
        expect(page.locator("main")).to_contain_text(XSS)
        # The text is there as text: no element of the page is a script but our own.
        sources = page.eval_on_selector_all("script", "all => all.map(s => s.src)")
        assert all(re.search(r"/static/dashboard\.js$", source) for source in sources)
    assert not any("pwned" in text for text in executed)
    # The page fixture also fails the test if any dialog (alert) opened.


def test_cancel_button_cancels_a_started_run_and_retry_starts_a_new_one(
    engine: Engine, base_url: str, page: Page
) -> None:
    run_id = start(engine, "pipeline", {"n": "never picked up"})
    page.goto(f"{base_url}/runs/{run_id}")
    expect(page.locator('button[data-action="retry"]')).to_have_count(0)

    page.click('button[data-action="cancel"]')
    # A confirmation page first: nothing is cancelled until it is confirmed.
    expect(page.locator("#question")).to_contain_text("Cancel this run?")
    page.click('button[data-confirm="cancel"]')

    expect(page.locator("#run-status")).to_have_attribute("data-status", "failed")
    expect(page.locator("#run-cancelled")).to_have_text("cancelled")
    expect(page.locator('button[data-action="cancel"]')).to_have_count(0)
    screenshot(page, "run-cancelled")

    page.click('button[data-action="retry"]')
    expect(page.locator("#question")).to_contain_text("Retry this run?")
    page.click('button[data-confirm="retry"]')

    # The retry is a new run of the same flow; the page of the retry links back.
    expect(page.locator("h1")).not_to_contain_text(str(run_id))
    expect(page.locator("#run-status")).to_have_attribute("data-status", "started")
    expect(page.locator(f'a[href$="/runs/{run_id}"]')).to_be_visible()
    page.goto(f"{base_url}/runs/{run_id}")
    expect(page.locator("#retried-as")).to_be_visible()
    expect(page.locator('button[data-action="retry"]')).to_have_count(0)


def test_read_only_dashboard_shows_no_actions(engine: Engine, page: Page) -> None:
    run_id = start(engine, "pipeline", {"n": 1})
    with serving(create_app(engine, read_only=True)) as url:
        page.goto(f"{url}/runs/{run_id}")
        expect(page.locator("#run-status")).to_have_attribute("data-status", "started")
        expect(page.locator("button[data-action]")).to_have_count(0)


class Branch(Flow, slug="branch_view"):
    @step(if_={"go": True})
    def maybe(self, input: Any) -> str:
        return "ran"

    @step
    def always(self, input: Any) -> str:
        return "ran"

    @step(depends_on=[always])
    def later(self, deps: Any) -> str:
        return "ran"


def test_a_skipped_step_is_drawn_apart_from_waiting_and_running_ones(
    engine: Engine, base_url: str, page: Page
) -> None:
    register(engine, Branch)
    run_id = start(engine, "branch_view", {"go": False})  # maybe's condition is unmet at once

    page.goto(f"{base_url}/runs/{run_id}")

    skipped = page.locator('g.node[data-step="maybe"]')
    expect(skipped).to_have_attribute("data-status", "skipped")
    expect(page.locator('g.node[data-step="later"]')).to_have_attribute("data-status", "created")
    expect(page.locator('table.steps tr[data-step="maybe"]')).to_contain_text("skipped")
    fills = {slug: _box_fill(page, slug) for slug in ("maybe", "always", "later")}
    assert len(set(fills.values())) == 3, fills  # skipped, started and created all differ
    # Retried and re-resolved: a live swap of the DAG can detach the box between find and read.
    expect(skipped.locator("rect.box")).to_have_css("stroke-dasharray", re.compile(r"\d"))
    expect(page.locator("#step-maybe + p")).to_have_text("skipped: it never ran")
    screenshot(page, "run-skipped-step")
