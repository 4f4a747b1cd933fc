"""examples/waiting.py and examples/subflows.py run as docs/waiting.md shows, and every Python
block of that page is taken verbatim from one of them (the Subflows section's from the second)."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest
import subflows
import waiting

from tests.helpers.docs import block, console

ROOT = Path(__file__).resolve().parents[2]


def test_the_waiting_example_prints_what_the_page_shows(capsys: pytest.CaptureFixture[str]) -> None:
    anyio.run(waiting.main)
    shown = console(
        block(
            "waiting.md",
            "Waiting and subflows: signal steps, subflows and run deadlines",
            "console",
        )
    )
    assert shown.commands == ["python examples/waiting.py"]
    assert capsys.readouterr().out.splitlines() == shown.output


def test_the_page_shows_the_example_verbatim() -> None:
    page = (ROOT / "docs" / "waiting.md").read_text()
    page, subflows = page.split("\n## Subflows: a flow as a step\n")
    subflows, rest = subflows.split("\n## ", 1)
    for text, name in ((page + rest, "waiting.py"), (subflows, "subflows.py")):
        example = (ROOT / "examples" / name).read_text()
        blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
        assert len(blocks) >= 3
        for found in blocks:
            assert found in example, f"this block of docs/waiting.md is not in {name}:\n{found}"


def test_the_subflows_example_prints_what_the_page_shows(
    capsys: pytest.CaptureFixture[str],
) -> None:
    anyio.run(subflows.main)
    shown = console(block("waiting.md", "Subflows: a flow as a step", "console"))
    assert shown.commands == ["python examples/subflows.py"]
    assert capsys.readouterr().out.splitlines() == shown.output
