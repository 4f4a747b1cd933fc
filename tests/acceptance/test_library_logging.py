"""A library is quiet: an application that embeds the worker and the client sees pgflow's events
only when it configures logging, at the level it chose, in the format it chose."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import URL

PROGRAM = Path(__file__).with_name("quiet_library_program.py")


def run_program(url: URL, mode: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, str(PROGRAM), url.render_as_string(hide_password=False), mode],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_without_logging_configuration_nothing_is_printed(pgflow_database: URL) -> None:
    result = run_program(pgflow_database, "none")
    assert (result.stdout, result.stderr) == ("", "")


def test_logging_at_info_gets_info_and_warning_events_only(pgflow_database: URL) -> None:
    lines = run_program(pgflow_database, "info").stdout.splitlines()
    events = [line.split(" ", 3)[:3] for line in lines if line.startswith(("INFO", "WARNING"))]
    # Every pgflow line is an event at INFO or above; the debug poll events stay out.
    assert {level for level, _, _ in events} == {"INFO", "WARNING"}
    assert not [line for line in lines if "poll." in line]
    assert ["INFO", "pgflow.task", "task.completed"] in events
    assert ["WARNING", "pgflow.task", "task.failed"] in events
    assert ["INFO", "pgflow.worker", "worker.started"] in events
    failed = next(line for line in lines if " task.failed " in line)
    assert "flow=quiet_refuse step=check" in failed
    assert "error='ValueError: Eve is not allowed'" in failed


def test_a_structlog_application_gets_events_through_its_own_processors(
    pgflow_database: URL,
) -> None:
    output = run_program(pgflow_database, "structlog").stdout
    events = [json.loads(line) for line in output.splitlines()]
    assert {event["level"] for event in events} == {"info", "warning"}
    completed = next(e for e in events if e["event"] == "task.completed")
    assert completed["flow"] == "quiet_greet"
    assert completed["step"] == "hello"
    assert isinstance(completed["duration_ms"], float)
