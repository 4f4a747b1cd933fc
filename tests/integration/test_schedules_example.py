"""examples/scheduling.py runs as docs/schedules.md shows, and every Python block of that page is
taken verbatim from the example."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest

import scheduling

ROOT = Path(__file__).resolve().parents[2]


def test_the_schedules_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    anyio.run(scheduling.main)
    lines = capsys.readouterr().out.splitlines()
    assert (
        lines[0] == "['created nightly_report', 'created digest_morning', 'created digest_evening']"
    )
    assert lines[1].startswith("digest_pulse fires next at ")
    assert lines[2] == "digest_pulse started a run: completed"
    assert lines[3].startswith("triggered nightly_report: {'build': 'report for 20")
    assert [line.split() for line in lines[4:]] == [
        ["digest_evening", "0", "18", "*", "*", "1-5", "America/New_York", "active"],
        ["digest_morning", "0", "8", "*", "*", "1-5", "America/New_York", "active"],
        ["digest_pulse", "*/2", "*", "*", "*", "*", "*", "UTC", "paused"],
        ["nightly_report", "0", "3", "*", "*", "*", "Europe/Paris", "active"],
    ]


def test_the_page_shows_the_example_verbatim() -> None:
    page = (ROOT / "docs" / "schedules.md").read_text()
    example = (ROOT / "examples" / "scheduling.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    assert blocks, "docs/schedules.md has no Python blocks"
    for block in blocks:
        assert block in example, f"this block of docs/schedules.md is not in the example:\n{block}"
