"""``pgflow runs|workers|prune`` as an operator runs them: separate processes, real exit codes."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import uuid
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, Engine

import sql_only_flow
from pgflow import Flow, start_flow, step
from tests.helpers import database

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NO_DATABASE = 0, 1, 2, 3


def pgflow_cli(url: URL | str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": url if isinstance(url, str) else database.libpq_url(url)}
    return subprocess.run(
        [sys.executable, "-m", "pgflow", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def json_of(url: URL, *args: str) -> Any:
    result = pgflow_cli(url, *args, "--json")
    assert result.returncode == EXIT_OK, result.stderr
    return json.loads(result.stdout)


def failing_greeting() -> dict[str, tuple[list[str], sql_only_flow.Handler]]:
    def refuse(task: Any) -> Any:
        raise ValueError(f"no greeting for {task['name']}")

    return {**sql_only_flow.GREETING_FLOW, "greeting": (["name"], refuse)}


@pytest.fixture
def runs(pgflow_engine: Engine) -> dict[str, uuid.UUID]:
    """A completed, a failed and a started run of the example's greeting flow."""
    with pgflow_engine.begin() as connection:
        sql_only_flow.define_flow(
            connection, "greeting", sql_only_flow.GREETING_FLOW, max_attempts=1
        )
    completed = start_flow(pgflow_engine, "greeting", {"name": "ada"})
    sql_only_flow.drive(pgflow_engine, "greeting", sql_only_flow.GREETING_FLOW, completed)
    failed = start_flow(pgflow_engine, "greeting", {"name": "bob"})
    sql_only_flow.drive(pgflow_engine, "greeting", failing_greeting(), failed)
    started = start_flow(pgflow_engine, "greeting", {"name": "cy"})
    return {"completed": completed, "failed": failed, "started": started}


def test_list_and_show_runs(pgflow_database: URL, runs: dict[str, uuid.UUID]) -> None:
    listed = json_of(pgflow_database, "runs", "list")
    assert {(r["run_id"], r["status"]) for r in listed} == {
        (str(run_id), status) for status, run_id in runs.items()
    }
    table = pgflow_cli(pgflow_database, "runs", "list", "--status", "failed", "--since", "1h")
    assert table.returncode == EXIT_OK
    assert str(runs["failed"]) in table.stdout
    assert str(runs["completed"]) not in table.stdout
    assert table.stdout.splitlines()[0].split()[:3] == ["RUN", "ID", "FLOW"]

    shown = pgflow_cli(pgflow_database, "runs", "show", str(runs["failed"]))
    assert shown.returncode == EXIT_OK, shown.stderr
    greeting = next(line for line in shown.stdout.splitlines() if "─ greeting" in line)
    assert "failed" in greeting
    assert "ValueError: no greeting for Bob" in greeting
    details = json_of(pgflow_database, "runs", "show", str(runs["completed"]))
    steps = {step["step_slug"]: step for step in details["steps"]}
    assert list(steps) == ["name", "greeting", "card"]
    assert steps["card"]["depends_on"] == ["greeting", "name"]
    assert steps["name"]["attempts"] == 1
    assert steps["name"]["output_bytes"] == len('"Ada"')
    assert details["run"]["output"]["card"]["to"] == "Ada"

    missing = pgflow_cli(pgflow_database, "runs", "show", str(uuid.uuid4()))
    assert missing.returncode == EXIT_REFUSED
    assert "does not exist" in missing.stderr


def test_cancel_resume_and_retry_with_exit_codes(
    pgflow_database: URL, runs: dict[str, uuid.UUID]
) -> None:
    started, failed, completed = (str(runs[k]) for k in ("started", "failed", "completed"))
    cancelled = pgflow_cli(pgflow_database, "runs", "cancel", started, "--reason", "ops test")
    assert cancelled.returncode == EXIT_OK, cancelled.stderr
    assert f"cancelled run {started}" in cancelled.stdout
    again = pgflow_cli(pgflow_database, "runs", "cancel", started)
    assert again.returncode == EXIT_OK
    assert "already cancelled" in again.stdout
    finished = pgflow_cli(pgflow_database, "runs", "cancel", completed)
    assert finished.returncode == EXIT_REFUSED
    assert "nothing to cancel" in finished.stdout
    listed = json_of(pgflow_database, "runs", "list", "--status", "cancelled")
    assert [(r["run_id"], r["cancel_reason"]) for r in listed] == [(started, "ops test")]

    resumed = json_of(pgflow_database, "runs", "resume", failed)
    assert resumed["outcome"] == "resumed"
    assert resumed["tasks_requeued"] == 1
    not_failed = pgflow_cli(pgflow_database, "runs", "resume", failed)
    assert not_failed.returncode == EXIT_REFUSED
    assert "only failed or cancelled" in not_failed.stdout

    retried = json_of(pgflow_database, "runs", "retry", started)
    assert retried["outcome"] == "retried"
    new_run = retried["new_run_id"]
    shown = json_of(pgflow_database, "runs", "show", new_run)
    assert shown["run"]["restart_of_run_id"] == started
    twice = pgflow_cli(pgflow_database, "runs", "retry", started)
    assert twice.returncode == EXIT_OK
    assert f"already retried as {new_run}" in twice.stdout
    refused = pgflow_cli(pgflow_database, "runs", "retry", completed)
    assert refused.returncode == EXIT_REFUSED


def test_prune_and_workers(pgflow_database: URL, runs: dict[str, uuid.UUID]) -> None:
    # Rows registered by the fixture's drivers, which never heartbeat: alive for an hour.
    workers = json_of(pgflow_database, "workers", "list", "--stale-after", "3600")
    assert workers
    assert {w["state"] for w in workers} == {"alive"}
    assert {w["queue_name"] for w in workers} == {"greeting"}
    database.run_sql(
        pgflow_database,
        "INSERT INTO pgflow.workers (worker_id, queue_name, function_name, last_heartbeat_at,"
        " deprecated_at) VALUES"
        " ('00000000-0000-0000-0000-00000000dead', 'greeting', 'old', now() - interval '2 h',"
        "  NULL),"
        " ('00000000-0000-0000-0000-0000000000ff', 'greeting', 'old', now() - interval '2 h',"
        "  now() - interval '2 h')",
    )
    states = {
        w["worker_id"][-4:]: w["state"]
        for w in json_of(pgflow_database, "workers", "list", "--stale-after", "3600")
    }
    assert (states["dead"], states["00ff"]) == ("dead", "stopped")

    preview = json_of(pgflow_database, "prune", "--older-than", "0s", "--dry-run")
    assert preview["dry_run"]
    assert preview["runs"] == 2
    text = pgflow_cli(pgflow_database, "prune", "--older-than", "30d", "--flow", "greeting")
    assert text.returncode == EXIT_OK
    assert text.stdout.startswith("deleted 0 run(s) finished before")
    pruned = json_of(pgflow_database, "prune", "--older-than", "0s", "--status", "failed")
    assert pruned["runs"] == 1
    assert pruned["step_tasks"] == 2
    left = {r["run_id"] for r in json_of(pgflow_database, "runs", "list")}
    assert left == {str(runs["completed"]), str(runs["started"])}


def test_usage_errors_and_no_database(pgflow_database: URL) -> None:
    assert pgflow_cli(pgflow_database, "runs", "show", "not-a-uuid").returncode == EXIT_USAGE
    bad_window = pgflow_cli(pgflow_database, "prune", "--older-than", "soon")
    assert bad_window.returncode == EXIT_USAGE
    assert "not a duration" in bad_window.stderr
    bad_since = pgflow_cli(pgflow_database, "runs", "list", "--since", "yesterday")
    assert bad_since.returncode == EXIT_USAGE
    assert pgflow_cli(pgflow_database, "prune").returncode == EXIT_USAGE
    nowhere = pgflow_cli("postgresql://postgres@127.0.0.1:1/none", "runs", "list")
    assert nowhere.returncode == EXIT_NO_DATABASE
    assert "cannot connect" in nowhere.stderr


class Cascade(Flow, slug="cli_cascade"):
    @step
    def check(self, input: dict[str, bool]) -> dict[str, bool]:
        return input

    @step(depends_on=[check], if_={"check": {"ok": True}}, when_unmet="skip-cascade")
    def charge(self, deps: Any) -> str:
        return "charged"

    @step(depends_on=[charge])
    def receipt(self, deps: Any) -> str:
        return "receipt"

    @step(depends_on=[check])
    def audit(self, deps: Any) -> str:
        return "audited"


def test_runs_show_says_which_steps_were_skipped_and_why(
    pgflow_database: URL, pgflow_engine: Engine
) -> None:
    database.register_flows(pgflow_engine, Cascade)
    with pgflow_engine.begin() as connection:
        run_id = start_flow(connection, Cascade, {"ok": False})
    worker_id = sql_only_flow.register_worker(pgflow_engine, "cli_cascade")
    handlers = {"check": lambda task: task["run"], "audit": lambda task: "audited"}
    while sql_only_flow.work_once(pgflow_engine, "cli_cascade", handlers, worker_id):
        pass

    shown = pgflow_cli(pgflow_database, "runs", "show", str(run_id))
    assert shown.returncode == EXIT_OK, shown.stderr
    lines = {line.split()[1]: line for line in shown.stdout.splitlines() if "─ " in line}
    assert "skipped (condition unmet)" in lines["charge"]
    assert "skipped (upstream skipped)" in lines["receipt"]
    assert "completed" in lines["audit"]
    details = json_of(pgflow_database, "runs", "show", str(run_id))
    reasons = {s["step_slug"]: s["skip_reason"] for s in details["steps"]}
    assert reasons == {
        "check": None,
        "charge": "condition_unmet",
        "receipt": "dependency_skipped",
        "audit": None,
    }


def test_a_unique_run_id_prefix_names_the_run(
    pgflow_database: URL, runs: dict[str, uuid.UUID]
) -> None:
    started = str(runs["started"])
    # The shortest prefix that only this run has (the dashboard's search accepts prefixes too).
    others = [str(r) for k, r in runs.items() if k != "started"]
    length = next(n for n in range(8, 37) if not any(o.startswith(started[:n]) for o in others))
    cancelled = pgflow_cli(pgflow_database, "runs", "cancel", started[:length])
    assert cancelled.returncode == EXIT_OK, cancelled.stderr
    assert f"cancelled run {started}" in cancelled.stdout

    nothing = pgflow_cli(pgflow_database, "runs", "show", "ffffffff-ff")
    assert nothing.returncode == EXIT_REFUSED
    assert nothing.stderr == "error: no run id starts with 'ffffffff-ff'\n"
    bad = pgflow_cli(pgflow_database, "runs", "retry", "xyz")
    assert bad.returncode == EXIT_USAGE
    assert "neither a run id nor a prefix of one" in bad.stderr


def test_an_ambiguous_prefix_is_refused_naming_two_matches(
    pgflow_engine: Engine, pgflow_database: URL, runs: dict[str, uuid.UUID]
) -> None:
    first = str(runs["started"])
    # Another run whose id shares the first 8 digits.
    twin = uuid.UUID(first[:8] + "-0000-4000-8000-000000000000")
    start_flow(pgflow_engine, "greeting", {"name": "dee"}, run_id=twin)
    refused = pgflow_cli(pgflow_database, "runs", "cancel", first[:8])
    assert refused.returncode == EXIT_REFUSED
    assert "several runs start with" in refused.stderr
    assert "give more digits" in refused.stderr


def _resumed_after_an_hour_failed(pgflow_database: URL, pgflow_engine: Engine) -> uuid.UUID:
    """A greeting run that failed, sat failed for an hour, was resumed and then completed (its
    resumed task failing one attempt first)."""
    with pgflow_engine.begin() as connection:
        sql_only_flow.define_flow(
            connection, "greeting", sql_only_flow.GREETING_FLOW, max_attempts=2, base_delay=0
        )
    run_id = start_flow(pgflow_engine, "greeting", {"name": "bob"})
    sql_only_flow.drive(pgflow_engine, "greeting", failing_greeting(), run_id)
    # The run sat failed for an hour before an operator resumed it.
    with pgflow_engine.begin() as connection:
        for table, columns in {
            "runs": ("started_at", "failed_at"),
            "step_states": ("created_at", "started_at", "completed_at", "failed_at"),
            "step_tasks": ("queued_at", "started_at", "completed_at", "failed_at"),
        }.items():
            moved = ", ".join(f"{c} = {c} - interval '1 hour'" for c in columns)
            update = text(f"UPDATE pgflow.{table} SET {moved} WHERE run_id = :id")
            connection.execute(update, {"id": run_id})
    assert json_of(pgflow_database, "runs", "resume", str(run_id))["outcome"] == "resumed"
    calls = []

    def fails_once(task: Any) -> Any:  # the resumed task fails its first attempt, then works
        calls.append(task)
        if len(calls) == 1:
            raise ValueError("flaky greeting")
        return f"Hello, {task['name']}!"

    steps = {**sql_only_flow.GREETING_FLOW, "greeting": (["name"], fails_once)}
    assert sql_only_flow.drive(pgflow_engine, "greeting", steps, run_id)["status"] == "completed"
    return run_id


def test_runs_show_of_a_resumed_run_shows_no_old_error_and_not_the_time_it_sat_failed(
    pgflow_database: URL, pgflow_engine: Engine
) -> None:
    run_id = _resumed_after_an_hour_failed(pgflow_database, pgflow_engine)
    shown = pgflow_cli(pgflow_database, "runs", "show", str(run_id))
    assert shown.returncode == EXIT_OK, shown.stderr
    lines = {line.split()[1]: line for line in shown.stdout.splitlines() if "─ " in line}
    assert "completed" in lines["greeting"]
    assert "Error" not in lines["greeting"]  # neither the old failure nor the retried attempt
    # Durations: the hour it sat failed is not counted (it is said, on the run's line).
    step_duration = lines["greeting"].split()[6]
    assert re.fullmatch(r"\d+ms|\d+\.\ds", step_duration), lines
    run_line = next(line for line in shown.stdout.splitlines() if line.startswith("duration"))
    assert re.search(r"\(not counting 6\d\.\dm failed before a resume\)$", run_line), run_line
    assert run_line.split()[1].endswith("s"), run_line


def test_runs_list_of_a_resumed_run_leaves_out_the_time_it_sat_failed(
    pgflow_database: URL, pgflow_engine: Engine
) -> None:
    run_id = _resumed_after_an_hour_failed(pgflow_database, pgflow_engine)
    listed = pgflow_cli(pgflow_database, "runs", "list")
    assert listed.returncode == EXIT_OK, listed.stderr
    header, *rows = listed.stdout.splitlines()
    row = next(line for line in rows if line.startswith(str(run_id)))
    # RUN ID, FLOW, STATUS, STARTED (UTC) date and time, DURATION: not 60.0m.
    duration = row.split()[5]
    assert header.split()[6] == "DURATION"
    assert re.fullmatch(r"\d+ms|\d+\.\ds", duration), row
    listed_json = json_of(pgflow_database, "runs", "list")
    (entry,) = [run for run in listed_json if run["run_id"] == str(run_id)]
    assert len(entry["failed_spans"]) == 1


def test_a_misspelt_flow_is_refused_with_a_did_you_mean(
    pgflow_database: URL, runs: dict[str, uuid.UUID]
) -> None:
    for args in (
        ("runs", "list", "--flow", "greetnig"),
        ("workers", "list", "--flow", "greetnig"),
        ("schedules", "list", "--flow", "greetnig"),
        ("prune", "--older-than", "1d", "--flow", "greetnig"),
    ):
        refused = pgflow_cli(pgflow_database, *args)
        assert refused.returncode == EXIT_REFUSED, (args, refused.stdout, refused.stderr)
        assert refused.stderr.startswith(
            "error: flow 'greetnig' is not registered in this database (did you mean 'greeting'?)"
        ), refused.stderr
    # A registered flow with nothing to list is not an error.
    assert pgflow_cli(pgflow_database, "workers", "list", "--flow", "greeting").returncode == 0


def test_prune_shows_progress_as_plain_lines_when_not_a_terminal(
    pgflow_database: URL, runs: dict[str, uuid.UUID]
) -> None:
    pruned = pgflow_cli(pgflow_database, "prune", "--older-than", "0s", "--batch-size", "1")
    assert pruned.returncode == EXIT_OK, pruned.stderr
    assert pruned.stdout.startswith("deleted 2 run(s)")
    progress = [line for line in pruned.stderr.splitlines() if line.startswith("pruning:")]
    # The first batch at once, then at most a line every few seconds, and the last one.
    # Batches of one run: completed (1 run, then an empty one), failed (the same).
    assert progress[0].startswith("pruning: batch 1, 1 run(s) and 3 task(s) removed ("), progress
    assert progress[-1].startswith("pruning: batch 4, 2 run(s) and 5 task(s) removed ("), progress
    assert re.search(r"\(\d+ rows\), \d+ runs/s, \d+\.\ds$", progress[-1]), progress
    assert "\r" not in pruned.stderr


def test_prune_shows_progress_on_one_line_on_a_terminal(
    pgflow_database: URL, runs: dict[str, uuid.UUID]
) -> None:
    controller, terminal = pty.openpty()
    env = {**os.environ, "DATABASE_URL": database.libpq_url(pgflow_database)}
    command = [sys.executable, "-m", "pgflow", "prune", "--older-than", "0s", "--batch-size", "1"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=terminal, env=env) as process:
        os.close(terminal)
        shown = b""
        while chunk := _read_terminal(controller):
            shown += chunk
        stdout = process.stdout.read() if process.stdout else b""
    os.close(controller)
    assert process.returncode == EXIT_OK, shown
    assert stdout.startswith(b"deleted 2 run(s)")
    text = shown.decode()
    # Rewritten in place: each batch's counts after a carriage return, erasing the rest.
    updates = re.findall(r"\r(pruning: batch \d+, \d+ run\(s\)[^\r\x1b]*)\x1b\[K", text)
    assert updates[0].startswith("pruning: batch 1, 1 run(s)"), text
    assert updates[-1].startswith("pruning: batch 4, 2 run(s)"), text
    assert text.endswith("\x1b[K\r\n"), text  # one newline at the end (the terminal adds \r)


def _read_terminal(controller: int) -> bytes:
    try:
        return os.read(controller, 4096)
    except OSError:  # EIO: the other side closed
        return b""
