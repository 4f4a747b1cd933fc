"""examples/start_flows.py runs as docs/starting-flows.md shows."""

from __future__ import annotations

import pytest

import start_flows


def test_the_start_flows_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    start_flows.main()
    # The library prints nothing of its own: these are all the example's lines.
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("started run ")
    assert lines[1:] == [
        "rolled back: run exists = False",
        lines[2],
        "run completed: {'greeting': 'Welcome, Ada!'}",
        "steps: profile completed, greeting completed",
    ]
    assert lines[2].endswith("hidden from workers for an hour")
