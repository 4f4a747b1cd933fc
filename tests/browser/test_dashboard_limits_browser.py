"""The limits page in a real browser: per key value, tasks in flight out of the limit and
tasks waiting on it; rate limits with their starts and booked waits; a worker draining them
(docs/flow-control.md)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from playwright.sync_api import Page, expect
from sqlalchemy.engine import Engine

from pgflow import Concurrency, Job, RateLimit, enqueue
from pgflow.dashboard import create_app
from tests.helpers.dashboard import register, screenshot, serving, worker_in_thread
from tests.helpers.waiting import wait_until


def waiting_syncs(engine: Engine) -> int:
    with engine.begin() as connection:
        return int(
            connection.execute(
                sa.text(
                    "SELECT count(*) FROM pgflow.runs"
                    " WHERE flow_slug = 'browser_sync' AND status <> 'completed'"
                )
            ).scalar_one()
        )


class Sync(Job, slug="browser_sync", concurrency=Concurrency(2, key="tenant")):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


class Mail(Job, slug="browser_mail", rate_limit=RateLimit.named("smtp", 1, per=600)):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


@pytest.fixture
def engine(pgflow_engine: Engine) -> Engine:
    register(pgflow_engine, Sync, Mail)
    return pgflow_engine


@pytest.fixture
def base_url(engine: Engine) -> Iterator[str]:
    with serving(create_app(engine)) as url:
        yield url


def test_the_limits_page_shows_use_and_waits_per_key(
    engine: Engine, base_url: str, page: Page
) -> None:
    with engine.begin() as connection:
        for n in range(5):
            enqueue(connection, Sync, {"tenant": "acme", "n": n})
        enqueue(connection, Sync, {"tenant": "globex", "n": 0})
        for n in range(3):
            enqueue(connection, Mail, {"n": n})

    page.goto(f"{base_url}/")
    page.click("nav >> text=Limits")
    acme = page.locator('tr[data-limit="browser_sync//concurrency"][data-key="acme"]')
    expect(acme.locator("td.in-use")).to_have_text("2/2")
    expect(acme.locator("td.waiting")).to_have_text("3")
    globex = page.locator('tr[data-limit="browser_sync//concurrency"][data-key="globex"]')
    expect(globex.locator("td.in-use")).to_have_text("1/2")
    expect(globex.locator("td.waiting")).to_have_text("0")
    mail = page.locator("tr[data-limit='browser_mail//rate']")
    expect(mail).to_contain_text("shared: smtp")
    expect(mail).to_contain_text("1 per 600 s")
    expect(mail.locator("td.waiting")).to_have_text("2")  # booked 10 and 20 minutes on
    expect(page.locator("#limits-waiting")).to_have_text("5")
    screenshot(page, "limits")

    # A worker drains the tenant syncs two at a time; the page shows none waiting then.
    with worker_in_thread(engine, Sync):
        wait_until(lambda: waiting_syncs(engine) == 0, timeout=60, what="the syncs to run")
    page.reload()
    expect(acme.locator("td.waiting")).to_have_text("0")
    expect(acme.locator("td.in-use")).to_have_text("0/2")

    page.click("text=browser_mail")
    expect(page.locator("tr[data-limit]")).to_have_count(1)
