"""Browser tests: Playwright driving Debian's chromium (Playwright's own browser download is not
reachable here). A missing browser fails the tests with the command that installs it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright

CHROMIUM = os.environ.get("PGFLOW_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Generous deadlines: an expectation returns as soon as it holds, and CI machines are shared.
DEADLINE_MS = 60_000
expect.set_options(timeout=DEADLINE_MS)

INSTALL_HINT = "apt-get install -y chromium  (as root; `make setup` does it when it can)"


# Module scope, not session: Playwright's sync API keeps an asyncio loop marked as running in
# this thread for as long as it is started, which breaks every later anyio test on the same
# xdist worker ("Cannot run the event loop while another loop is running").
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"the browser tests need Debian's chromium at {CHROMIUM} (or set PGFLOW_CHROMIUM): "
            f"{INSTALL_HINT}",
            pytrace=False,
        )
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(DEADLINE_MS)
    dialogs: list[str] = []

    def refuse(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    opened.on("dialog", refuse)
    try:
        yield opened
    finally:
        context.close()
    # No page may ever open a dialog: that is what an injected script would do first.
    assert dialogs == [], f"a page opened dialogs: {dialogs}"
