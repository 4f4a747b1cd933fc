"""`make demo` (README, "Two commands") is `make setup`, then examples/demo.py: the demo runs
to its end against a database of its own (named with the test-database prefix)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgflow._devserver import DevServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_demo_runs_to_its_end(pgflow_server: DevServer) -> None:
    url = pgflow_server.url.set(drivername="postgresql").render_as_string(hide_password=False)
    done = subprocess.run(
        [sys.executable, "examples/demo.py"],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert ">>> see these runs in the web dashboard: make demo DEMO_ARGS=--dashboard" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
