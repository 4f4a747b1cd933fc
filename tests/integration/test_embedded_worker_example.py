"""examples/embedded_worker.py runs as docs/workers.md shows."""

from __future__ import annotations

from pathlib import Path

import anyio
import embedded_worker
import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_embedded_worker_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    anyio.run(embedded_worker.main)
    # structlog, unconfigured here, prints pgflow's events to stdout too: keep the example's own.
    lines = [line for line in capsys.readouterr().out.splitlines() if not line.startswith("20")]
    assert lines == ["run completed: {'upper': 'HELLO'}", "ticker ran: True"]


def test_the_docs_show_the_example_verbatim() -> None:
    docs = (ROOT / "docs" / "workers.md").read_text()
    source = (ROOT / "examples" / "embedded_worker.py").read_text()
    shown = docs.split("class Shout(Flow", 1)[1].split("```", 1)[0]
    assert "class Shout(Flow" + shown in source
