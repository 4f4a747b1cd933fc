"""examples/conditional_flows.py runs as docs/defining-flows.md shows, and the Python blocks of
the page's "Conditional steps" section are taken verbatim from the example."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import pytest

import conditional_flows

ROOT = Path(__file__).resolve().parents[2]


def test_the_conditional_flows_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    anyio.run(conditional_flows.main)
    assert capsys.readouterr().out.splitlines() == [
        "ticket {'plan': 'pro'}: {'close': {'answer': 'phone call booked', 'enriched': False}}"
        " skipped=['self_service', 'enrich']",
        "ticket {'plan': 'free'}: {'close': {'answer': 'help article sent', 'enriched': False}}"
        " skipped=['call_back', 'enrich']",
        "refund {'paid': False, 'amount': 30}: {'log': 'logged'}"
        " skipped=['reverse_charge', 'notify']",
    ]


def test_the_page_shows_the_example_verbatim() -> None:
    page = (ROOT / "docs" / "defining-flows.md").read_text()
    section = page[page.index("## Conditional steps") : page.index("## Slugs")]
    example = (ROOT / "examples" / "conditional_flows.py").read_text()
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)
    assert len(blocks) == 2
    for block in blocks:
        assert block in example, (
            f"this block of docs/defining-flows.md is not in the example:\n{block}"
        )
