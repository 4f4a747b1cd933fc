"""examples/operating_runs.py runs as docs/operations.md shows, and every Python block of that
page is taken verbatim from the example."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest

import operating_runs

ROOT = Path(__file__).resolve().parents[2]


def test_the_operating_runs_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    anyio.run(operating_runs.main)
    assert capsys.readouterr().out.splitlines() == [
        "same run for order-42: True",
        "checkout failed at price: RuntimeError: lamp is out of stock",
        "resume: resumed, 2 task(s) queued again",
        "checkout {'charge': {'charged': 675}}",
        "priced again: ['desk', 'lamp']",
        "cancel: cancelled, 1 task(s) ended",
        "export: run <run> of flow 'export' was cancelled: customer closed the tab",
        "cancel again: already_cancelled",
        "notify failed: ConnectionError: mail server unavailable",
        "retry: {'perform': 'sent to ada@example.org'}, restart of the failed run: True",
        "failed run points to its retry: True",
        "notify    completed",
        "notify    failed",
        "export    cancelled",
        "checkout  completed",
        "price: completed, 3/3 tasks, 3 attempts",
        "charge: completed, 1/1 tasks, 1 attempts",
        "older than 30 days: 0 run(s)",
        "pruned 2 notify run(s) and 2 task(s)",
    ]


def test_the_page_shows_the_example_verbatim() -> None:
    page = (ROOT / "docs" / "operations.md").read_text()
    example = (ROOT / "examples" / "operating_runs.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    assert blocks, "docs/operations.md has no Python blocks"
    for block in blocks:
        assert block in example, f"this block of docs/operations.md is not in the example:\n{block}"
