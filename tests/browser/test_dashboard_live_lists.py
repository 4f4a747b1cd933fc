"""The dashboard's list pages, schedules, bulk actions and map tasks in a real browser: lists
update themselves from server-sent events (the document is never reloaded), every action asks
first, and a failed element of a large map is one click away."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect
from sqlalchemy.engine import Engine

import sql_only_flow
from pgflow.cron import Cron
from pgflow.dashboard import create_app
from pgflow.schedules import create_schedule, get_schedule
from tests.helpers.dashboard import (
    FANOUT_HANDLERS,
    FANOUT_ONCE_HANDLERS,
    PIPELINE_HANDLERS,
    Fanout,
    FanoutOnce,
    Pipeline,
    drive,
    register,
    screenshot,
    serving,
    start,
)


@pytest.fixture
def engine(pgflow_engine: Engine) -> Engine:
    register(pgflow_engine, Pipeline, Fanout, FanoutOnce)
    return pgflow_engine


@pytest.fixture
def base_url(engine: Engine) -> Iterator[str]:
    with serving(create_app(engine)) as url:
        yield url


def _same_document(page: Page) -> None:
    page.evaluate("window.pgflowSameDocument = true")


def _still_same_document(page: Page) -> None:
    assert page.evaluate("window.pgflowSameDocument") is True, "the page was reloaded"


def test_runs_list_and_overview_update_live(engine: Engine, base_url: str, page: Page) -> None:
    page.goto(f"{base_url}/runs")
    _same_document(page)
    expect(page.locator("#live-runs")).to_contain_text("No runs.")
    run_id = start(engine, "pipeline", {"n": 1})
    row = page.locator(f'tr[data-run-id="{run_id}"]')
    expect(row).to_contain_text("started")
    drive(engine, "pipeline", PIPELINE_HANDLERS, run_id)
    expect(row).to_contain_text("completed")
    _still_same_document(page)

    page.goto(f"{base_url}/")
    _same_document(page)
    completed = page.locator('#stats-flows tr[data-flow="pipeline"] td').nth(3)
    expect(completed).to_have_text("1")
    drive(engine, "pipeline", PIPELINE_HANDLERS, start(engine, "pipeline", {"n": 2}))
    expect(completed).to_have_text("2")
    _still_same_document(page)


def test_workers_page_updates_live(engine: Engine, base_url: str, page: Page) -> None:
    page.goto(f"{base_url}/workers")
    _same_document(page)
    expect(page.locator("#live-workers")).to_contain_text("No workers have registered.")
    worker_id = sql_only_flow.register_worker(engine, "pipeline", "live_test_worker")
    expect(page.locator(f'tr[data-worker="{worker_id}"]')).to_contain_text("alive")
    _still_same_document(page)


def test_map_progress_moves_before_the_step_ends(engine: Engine, base_url: str, page: Page) -> None:
    run_id = start(engine, "fanout", list(range(100)))
    worker_id = sql_only_flow.register_worker(engine, "fanout", "progress_test")
    page.goto(f"{base_url}/runs/{run_id}")
    _same_document(page)
    label = page.locator('g.node[data-step="square"] text.sub')
    expect(label).to_have_text("map · started · 0/100")
    # One batch of ten tasks: the step is still running, and the page says so by itself.
    assert sql_only_flow.work_once(engine, "fanout", FANOUT_HANDLERS, worker_id) == 10
    expect(label).to_have_text("map · started · 10/100")
    assert sql_only_flow.work_once(engine, "fanout", FANOUT_HANDLERS, worker_id) == 10
    expect(label).to_have_text("map · started · 20/100")
    _still_same_document(page)


def test_failed_only_and_jump_to_an_index_in_a_map(
    engine: Engine, base_url: str, page: Page
) -> None:
    run_id = start(engine, "fanout_once", list(range(60)))
    drive(engine, "fanout_once", FANOUT_ONCE_HANDLERS, run_id)
    page.goto(f"{base_url}/runs/{run_id}")
    page.click('details[data-step="square"] summary')
    page.click('a[data-failed-only="square"]')
    rows = page.locator("table.tasks tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-task", "square/17")
    expect(rows.first).to_contain_text("17 is not allowed")
    screenshot(page, "map-failed-only")

    page.goto(f"{base_url}/runs/{run_id}")
    page.click('details[data-step="square"] summary')
    page.fill('details[data-step="square"] input[name="from"]', "42")
    page.click('button[data-jump="square"]')
    expect(page.locator("table.tasks tbody tr").first).to_have_attribute("data-task", "square/42")


def test_schedules_page_pauses_after_confirmation(
    engine: Engine, base_url: str, page: Page
) -> None:
    create_schedule(engine, Pipeline, Cron("0 3 * * *", name="nightly", input={"n": 0}))
    create_schedule(engine, Fanout, Cron("*/15 * * * *", name="quarterly", input=[1, 2]))
    page.goto(f"{base_url}/schedules")
    row = page.locator('tr[data-schedule="nightly"]')
    expect(row.locator("td.next-fire")).to_contain_text("03:00:00")
    screenshot(page, "schedules")
    row.locator('button[data-action="pause"]').click()
    expect(page.locator("#question")).to_contain_text("Pause this schedule?")
    assert get_schedule(engine, "nightly").paused is False
    page.click('button[data-confirm="schedule-pause"]')
    expect(row.locator("[data-state]")).to_have_attribute("data-state", "paused")
    expect(row.locator("td.next-fire")).to_have_text("\N{EN DASH}")
    assert get_schedule(engine, "nightly").paused is True

    row.locator('button[data-action="trigger"]').click()
    page.click('button[data-confirm="schedule-trigger"]')
    expect(page).to_have_url(re.compile(r"/runs/[0-9a-f-]{36}$"))
    expect(page.locator("#run-status")).to_have_attribute("data-status", "started")


def test_bulk_cancel_by_filter_shows_the_count_first(
    engine: Engine, base_url: str, page: Page
) -> None:
    for n in range(3):
        start(engine, "pipeline", {"n": n})
    start(engine, "fanout", [1])
    page.goto(f"{base_url}/runs?flow=pipeline&status=started")
    expect(page.locator("table.runs tbody tr")).to_have_count(3)
    page.click('a[data-bulk="cancel"]')
    expect(page.locator("#question")).to_contain_text("Cancel 3 started runs?")
    screenshot(page, "bulk-cancel")
    with engine.connect() as connection:
        assert (
            connection.execute(
                sa.text("SELECT count(*) FROM pgflow_python.run_cancellations")
            ).scalar_one()
            == 0
        )
    page.click('button[data-confirm="bulk-cancel"]')
    expect(page.locator("#bulk-done")).to_have_text("3")
    page.goto(f"{base_url}/runs?status=cancelled")
    expect(page.locator("table.runs tbody tr")).to_have_count(3)
    expect(page.locator("table.runs tbody tr").first).to_contain_text("cancelled")
    page.goto(f"{base_url}/runs?status=started")
    expect(page.locator("table.runs tbody tr")).to_have_count(1)


def test_read_only_shows_no_bulk_or_schedule_actions(engine: Engine, page: Page) -> None:
    create_schedule(engine, Pipeline, Cron("0 3 * * *", name="nightly"))
    start(engine, "pipeline", {"n": 1})
    with serving(create_app(engine, read_only=True)) as url:
        page.goto(f"{url}/runs")
        expect(page.locator("table.runs tbody tr")).to_have_count(1)
        expect(page.locator("a[data-bulk]")).to_have_count(0)
        page.goto(f"{url}/schedules")
        expect(page.locator('tr[data-schedule="nightly"]')).to_be_visible()
        expect(page.locator("button[data-action]")).to_have_count(0)
