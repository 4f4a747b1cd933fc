"""examples/flow_control.py runs as docs/flow-control.md shows, and every Python block of that
page is taken verbatim from the example."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import flow_control
import pytest

from tests.helpers.docs import block, console

ROOT = Path(__file__).resolve().parents[2]


def test_the_example_prints_what_the_page_shows(capsys: pytest.CaptureFixture[str]) -> None:
    anyio.run(flow_control.main)
    title = "Flow control: concurrency limits, priorities, rate limits"
    shown = console(block("flow-control.md", title, "console"))
    assert shown.commands == ["python examples/flow_control.py"]
    assert capsys.readouterr().out.splitlines() == shown.output


def test_the_page_shows_the_example_verbatim() -> None:
    page = (ROOT / "docs" / "flow-control.md").read_text()
    example = (ROOT / "examples" / "flow_control.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    assert len(blocks) >= 2
    for found in blocks:
        assert found in example, (
            f"this block of docs/flow-control.md is not in the example:\n{found}"
        )
