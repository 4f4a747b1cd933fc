"""The command line's errors: one line on stderr, no traceback, a documented exit code
(0 ok, 1 refused or a problem, 2 a configuration mistake a restart cannot fix, 3 no database)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import URL

FLOWS = """\
from pgflow import Flow, step


class Hello(Flow, slug="hello"):
    @step
    def greet(self, input):
        return "hello"
"""


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "good_flows.py").write_text(FLOWS)
    (tmp_path / "raising_flows.py").write_text(
        "from pgflow import Flow\n\nraise RuntimeError('settings missing: API_KEY')\n"
    )
    (tmp_path / "broken_flows.py").write_text("def handler(:\n    pass\n")
    return tmp_path


def pgflow_cli(cwd: Path, *args: str, database_url: str | None = None) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    done = subprocess.run(
        [sys.executable, "-m", "pgflow", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stderr


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.mark.parametrize("command", ["compile", "run-worker"])
def test_a_flow_module_that_raises_is_named_with_the_error_and_its_place(
    project: Path, command: str
) -> None:
    code, stderr = pgflow_cli(project, command, "raising_flows", database_url="postgresql://x@h/d")
    assert code == 2
    line = one_line(stderr)
    assert "cannot import 'raising_flows'" in line
    assert "RuntimeError: settings missing: API_KEY" in line
    assert f"({project / 'raising_flows.py'}, line 3)" in line


@pytest.mark.parametrize("command", ["compile", "run-worker"])
def test_a_flow_module_with_a_syntax_error_is_named_with_its_line(
    project: Path, command: str
) -> None:
    code, stderr = pgflow_cli(project, command, "broken_flows", database_url="postgresql://x@h/d")
    assert code == 2
    line = one_line(stderr)
    assert "cannot import 'broken_flows'" in line
    assert f"SyntaxError: invalid syntax ({project / 'broken_flows.py'}, line 1)" in line


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("not a url", "'not a url'"),
        ("postgresql://ada:s3cret@db.example:fivefour/app", "'postgresql://ada:***@db.example:"),
        ("mysql://ada@db.example/app", "unsupported database URL scheme 'mysql'"),
    ],
)
def test_an_unusable_database_url_is_a_usage_error(project: Path, url: str, shown: str) -> None:
    for args in (["db", "status"], ["run-worker", "good_flows"]):
        code, stderr = pgflow_cli(project, *args, database_url=url)
        assert code == 2, stderr
        line = one_line(stderr)
        assert shown in line
        assert "s3cret" not in line


def test_worker_options_that_do_not_fit_together_are_a_usage_error(project: Path) -> None:
    code, stderr = pgflow_cli(
        project,
        "run-worker",
        "good_flows",
        "--heartbeat-interval",
        "20",
        database_url="postgresql://nobody@127.0.0.1:1/none",
    )
    assert code == 2
    assert one_line(stderr) == (
        "error: --heartbeat-timeout (30) must be at least twice --heartbeat-interval (20.0)"
    )


def test_an_invalid_heartbeat_interval_is_a_usage_error(project: Path) -> None:
    code, stderr = pgflow_cli(project, "run-worker", "good_flows", "--heartbeat-interval", "soon")
    assert code == 2
    assert "Invalid value for '--heartbeat-interval'" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("command", ["compile", "run-worker"])
def test_a_misspelt_flow_module_exits_2_naming_the_fix(project: Path, command: str) -> None:
    code, stderr = pgflow_cli(project, command, "god_flows", database_url="postgresql://x@h/d")
    assert code == 2
    line = one_line(stderr)
    assert "cannot import 'god_flows'" in line
    assert "importable from the current directory" in line


@pytest.mark.parametrize(
    "args", [("run-worker", "good_flows"), ("db", "status"), ("dashboard",), ("runs", "list")]
)
def test_no_database_configured_exits_2_naming_database_url(
    project: Path, args: tuple[str, ...]
) -> None:
    code, stderr = pgflow_cli(project, *args)
    assert code == 2, stderr
    assert "no database configured: set DATABASE_URL (or pass --database-url)" in one_line(stderr)


def test_a_dashboard_on_a_busy_port_exits_2_naming_port(
    project: Path, pgflow_empty_database: URL
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr = pgflow_cli(
            project,
            "dashboard",
            "--port",
            str(port),
            database_url=pgflow_empty_database.render_as_string(hide_password=False),
        )
    assert code == 2, stderr
    line = one_line(stderr)
    assert f"cannot serve the dashboard on 127.0.0.1:{port}" in line
    assert "pass another --port" in line


def test_a_busy_metrics_port_exits_2_naming_metrics_port(project: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, stderr = pgflow_cli(
            project,
            "run-worker",
            "good_flows",
            "--metrics-port",
            str(port),
            database_url="postgresql://nobody@127.0.0.1:1/none",
        )
    assert code == 2, stderr
    assert "pass another --metrics-port" in one_line(stderr)


def test_no_database_is_exit_code_3(project: Path) -> None:
    code, stderr = pgflow_cli(
        project, "db", "status", database_url="postgresql://nobody@127.0.0.1:1/none"
    )
    assert code == 3
    assert "cannot connect to postgresql://nobody@127.0.0.1:1/none" in one_line(stderr)


@pytest.mark.parametrize(
    "args",
    [
        ("runs", "list"),
        ("workers", "list"),
        ("schedules", "list"),
        ("prune", "--older-than", "1d", "--dry-run"),
        ("runs", "cancel", "00000000-0000-0000-0000-000000000001"),
    ],
)
def test_a_database_without_the_schema_is_one_line_naming_the_installer(
    project: Path, pgflow_empty_database: URL, args: tuple[str, ...]
) -> None:
    url = pgflow_empty_database.render_as_string(hide_password=False)
    code, stderr = pgflow_cli(project, *args, database_url=url)
    assert code == 1
    line = one_line(stderr)
    assert line.startswith("error: database error: ")
    assert "does not exist" in line
    assert "pgflow db install" in line


def test_an_unknown_run_is_one_line_without_advice_about_waiting(
    project: Path, pgflow_database: URL
) -> None:
    url = pgflow_database.render_as_string(hide_password=False)
    for verb in ("cancel", "resume", "retry"):
        code, stderr = pgflow_cli(
            project, "runs", verb, "00000000-0000-0000-0000-000000000001", database_url=url
        )
        assert code == 1
        line = one_line(stderr)
        assert "run 00000000-0000-0000-0000-000000000001 does not exist" in line
        assert "waiting" not in line


@pytest.mark.parametrize(
    ("args", "shown"),
    [
        (("runs", "list", "--status", "bogus"), "Invalid value for '--status'"),
        (("runs", "show", "nope"), "'nope' is neither a run id nor a prefix of one"),
        (("prune", "--dry-run"), "Missing option '--older-than'"),
        (("--log-format", "xml", "db", "status"), "Invalid value for '--log-format'"),
        (("runs", "frobnicate"), "No such command 'frobnicate'"),
        (("schedules", "list", "--bogus"), "--bogus"),
    ],
)
def test_bad_options_are_one_line_naming_the_help(
    project: Path, args: tuple[str, ...], shown: str
) -> None:
    code, stderr = pgflow_cli(project, *args, database_url="postgresql://nobody@127.0.0.1:1/none")
    assert code == 2
    line = one_line(stderr)
    assert shown in line
    assert "--help')" in line


@pytest.mark.parametrize(
    "args",
    [
        ["--heartbeat-interval", "nan"],
        ["--poll-interval", "nan"],
        ["--recovery-interval", "inf"],
        ["--shutdown-timeout", "nan"],
        ["--max-requeues", "-1"],
        ["--visibility-margin", "-100"],
        ["--concurrency", "1000000000"],
    ],
    ids=" ".join,
)
def test_an_option_value_outside_its_range_exits_2_with_one_line(
    project: Path, args: list[str]
) -> None:
    code, stderr = pgflow_cli(
        project,
        "run-worker",
        "good_flows",
        *args,
        database_url="postgresql://nobody@127.0.0.1:1/none",
    )
    assert code == 2, stderr
    assert one_line(stderr).startswith(f"error: {args[0]} must be from ")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ("prune", "--older-than", "99999999999d"),
            "'99999999999d' is longer than the longest duration, 999999999d",
        ),
        (
            ("runs", "list", "--since", "99999999999d"),
            "'99999999999d' is neither a duration",
        ),
    ],
    ids=["prune", "runs-list"],
)
def test_a_duration_too_long_for_python_is_a_usage_error_not_a_traceback(
    project: Path, args: tuple[str, ...], error: str
) -> None:
    code, stderr = pgflow_cli(project, *args, database_url="postgresql://nobody@127.0.0.1:1/none")
    assert code == 2, stderr
    assert "Traceback" not in stderr
    assert error in one_line(stderr)
