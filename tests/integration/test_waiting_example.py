"""examples/waiting.py runs as docs/waiting.md shows, and every Python block of that page is
taken verbatim from the example."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest
import waiting

from tests.helpers.docs import block, console

ROOT = Path(__file__).resolve().parents[2]


def test_the_waiting_example_prints_what_the_page_shows(capsys: pytest.CaptureFixture[str]) -> None:
    anyio.run(waiting.main)
    shown = console(
        block("waiting.md", "Waiting and deadlines: signal steps and run deadlines", "console")
    )
    assert shown.commands == ["python examples/waiting.py"]
    assert capsys.readouterr().out.splitlines() == shown.output


def test_the_page_shows_the_example_verbatim() -> None:
    page = (ROOT / "docs" / "waiting.md").read_text()
    example = (ROOT / "examples" / "waiting.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    assert len(blocks) >= 6
    for found in blocks:
        assert found in example, f"this block of docs/waiting.md is not in the example:\n{found}"
