"""``pgflow runs signal``, ``runs list --waiting`` and ``runs show`` for waiting runs, as an
operator runs them: separate processes, real exit codes."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from sqlalchemy.engine import URL, Engine

from pgflow import Flow, start_flow, step, wait_step
from pgflow.operations import list_runs
from tests.acceptance.test_cli_runs import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, pgflow_cli
from tests.helpers.database import register_flows
from tests.integration.test_dashboard_waits import parent_waiting_on_children


class Approval(Flow, slug="cli_approval"):
    @wait_step(timeout=timedelta(hours=2))
    def approve(self) -> None: ...

    @step(depends_on=[approve])
    def send(self, deps: dict[str, Any]) -> Any:
        return deps


def test_a_waiting_run_is_listed_shown_and_signalled_from_the_shell(
    pgflow_engine: Engine, pgflow_database: URL
) -> None:
    register_flows(pgflow_engine, Approval)
    waiting = start_flow(pgflow_engine, Approval, {}, deadline=timedelta(days=1))
    other = start_flow(pgflow_engine, Approval, {})
    signalled = pgflow_cli(pgflow_database, "runs", "signal", str(other), "approve")
    assert signalled.returncode == EXIT_OK, signalled.stderr
    assert signalled.stdout.strip() == f"step approve of run {other} completed; run started"

    listed = pgflow_cli(pgflow_database, "runs", "list", "--waiting", "--json")
    assert listed.returncode == EXIT_OK, listed.stderr
    assert [run["run_id"] for run in json.loads(listed.stdout)] == [str(waiting)]
    assert [r.run_id for r in list_runs(pgflow_engine, waiting=True)] == [waiting]

    shown = pgflow_cli(pgflow_database, "runs", "show", str(waiting))
    assert shown.returncode == EXIT_OK, shown.stderr
    assert "deadline  " in shown.stdout
    assert "(start_flow)" in shown.stdout
    [approve_line] = [line for line in shown.stdout.splitlines() if "─ approve" in line]
    assert "waiting for a signal since" in approve_line
    assert " until " in approve_line

    done = pgflow_cli(
        pgflow_database, "runs", "signal", str(waiting), "approve", "--output", '{"ok": true}'
    )
    assert done.returncode == EXIT_OK, done.stderr
    again = pgflow_cli(
        pgflow_database, "runs", "signal", str(waiting), "approve", "--output", "1", "--json"
    )
    assert again.returncode == EXIT_OK, again.stderr
    assert json.loads(again.stdout)["outcome"] == "already_signalled"
    with pgflow_engine.begin() as connection:
        from pgflow import get_run_with_states  # noqa: PLC0415

        run = get_run_with_states(connection, waiting)
    assert run is not None
    assert [t.output for t in run.tasks if t.step_slug == "approve"] == [{"ok": True}]


def test_bad_signals_from_the_shell_exit_non_zero_with_one_line(
    pgflow_engine: Engine, pgflow_database: URL
) -> None:
    register_flows(pgflow_engine, Approval)
    run_id = start_flow(pgflow_engine, Approval, {})
    not_json = pgflow_cli(
        pgflow_database, "runs", "signal", str(run_id), "approve", "--output", "{"
    )
    assert not_json.returncode == EXIT_USAGE
    assert "not JSON" in not_json.stderr
    wrong_step = pgflow_cli(pgflow_database, "runs", "signal", str(run_id), "send")
    assert wrong_step.returncode == EXIT_REFUSED
    assert "not a wait step" in wrong_step.stderr
    assert len(wrong_step.stderr.strip().splitlines()) == 1


def test_a_subflow_step_waiting_for_its_children_is_listed_as_waiting(
    pgflow_engine: Engine, pgflow_database: URL
) -> None:
    parent, (_, running) = parent_waiting_on_children(pgflow_engine)
    listed = pgflow_cli(pgflow_database, "runs", "list", "--waiting", "--json")
    assert listed.returncode == EXIT_OK, listed.stderr
    # The parent (its step waits for children) and the running child (it waits for a signal).
    assert {run["run_id"] for run in json.loads(listed.stdout)} == {str(parent), str(running)}
    only = list_runs(pgflow_engine, waiting=True, flow="dash_parent")
    assert [r.run_id for r in only] == [parent]
    shown = pgflow_cli(pgflow_database, "runs", "show", str(parent))
    assert shown.returncode == EXIT_OK, shown.stderr
    [kids_line] = [line for line in shown.stdout.splitlines() if "─ kids" in line]
    assert "waiting for 3 child runs (1 done)" in kids_line
