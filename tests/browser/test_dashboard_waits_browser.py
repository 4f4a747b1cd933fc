"""A waiting run in a real browser: the run page and the list show its wait, and the signal
form completes it; a subflow step waiting for its children links to them (docs/dashboard.md,
docs/waiting.md)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy.engine import Engine

from pgflow import Flow, start_flow, step, wait_step
from pgflow.dashboard import create_app
from tests.helpers.dashboard import register, screenshot, serving, worker_in_thread
from tests.integration.test_dashboard_waits import parent_waiting_on_children


class Refund(Flow, slug="browser_refund"):
    @step
    def draft(self, order: dict[str, Any]) -> dict[str, Any]:
        return {"order": order["id"], "amount": order["amount"]}

    @wait_step(depends_on=[draft], timeout=timedelta(days=3))
    def approval(self) -> None: ...

    @step(depends_on=[draft, approval])
    def pay(self, deps: dict[str, Any]) -> dict[str, Any]:
        return {"refunded": deps["draft"]["amount"] if deps["approval"]["approved"] else 0}


@pytest.fixture
def engine(pgflow_engine: Engine) -> Engine:
    register(pgflow_engine, Refund)
    return pgflow_engine


@pytest.fixture
def base_url(engine: Engine) -> Iterator[str]:
    with serving(create_app(engine)) as url:
        yield url


def test_a_waiting_run_shows_its_wait_and_is_completed_from_the_signal_form(
    engine: Engine, base_url: str, page: Page
) -> None:
    with worker_in_thread(engine, Refund):
        run_id = start_flow(engine, Refund, {"id": 7, "amount": 30})
        page.goto(f"{base_url}/runs/{run_id}")
        # The page updates itself: the wait appears once the worker has finished the draft.
        wait_row = page.locator('#run-waits tr[data-wait="approval"]')
        expect(wait_row).to_contain_text("a signal")
        expect(wait_row).to_contain_text("ago")
        expect(wait_row).to_contain_text("the run fails")
        screenshot(page, "run-waiting")

        page.goto(f"{base_url}/waits")
        listed = page.locator(f'tr[data-wait="{run_id}/approval"]')
        expect(listed).to_contain_text("browser_refund")
        listed.locator("a[data-signal]").click()

        expect(page.locator("#wait-summary")).to_contain_text("Waiting for a signal since")
        page.fill("#signal-output", "{approved: true}")
        page.click('button[data-confirm="signal"]')
        expect(page.locator("#signal-error")).to_contain_text("not JSON")
        expect(page.locator("#signal-output")).to_have_value("{approved: true}")

        page.fill("#signal-output", '{"approved": true, "note": "refund ok"}')
        screenshot(page, "signal-form")
        page.click('button[data-confirm="signal"]')

        # Back on the run page: the wait is gone and the run goes on to completion.
        expect(page.locator("#run-status")).to_have_attribute("data-status", "completed")
        expect(page.locator("#run-waits")).to_have_count(0)
        expect(page.locator("pre.value").first).to_contain_text('"refunded": 30')

        # The step no longer waits: its form says so and offers nothing to send.
        page.goto(f"{base_url}/runs/{run_id}/steps/approval/signal")
        expect(page.locator("#signal-not-waiting")).to_be_visible()


def test_a_subflow_step_waiting_for_its_children_links_to_them(
    pgflow_engine: Engine, page: Page
) -> None:
    parent, (done, running) = parent_waiting_on_children(pgflow_engine)
    with serving(create_app(pgflow_engine)) as base_url:
        page.goto(f"{base_url}/waits")
        listed = page.locator(f'tr[data-wait="{parent}/kids"]')
        expect(listed).to_contain_text("3 child runs (1 done, 1 not started yet)")
        expect(listed.locator("a[data-signal]")).to_have_count(0)
        listed.locator(f'a[data-child-run][href$="/runs/{running}"]').click()
        # The child's page: its own wait, and a link back to its parent.
        expect(page.locator('#run-waits tr[data-wait="ok"]')).to_contain_text("a signal")
        page.locator("#parent-run").click()
        wait_row = page.locator('#run-waits tr[data-wait="kids"]')
        expect(wait_row).to_contain_text("no timeout: its child runs end it")
        expect(wait_row.locator("a[data-child-run]")).to_have_count(2)
        expect(wait_row.locator(f'a[href$="/runs/{done}"]')).to_have_count(1)
