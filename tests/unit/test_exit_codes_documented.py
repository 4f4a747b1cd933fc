"""The exit statuses the docs' supervision tables list are the ones the code uses."""

from __future__ import annotations

import re
from pathlib import Path

from pgflow.cli._common import EXIT_NO_DATABASE, EXIT_PROBLEM, EXIT_USAGE
from pgflow.worker._worker import EXIT_FORCED

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _statuses(page: str, heading: str) -> set[int]:
    section = (DOCS / page).read_text().split(heading, 1)[1].split("\n#", 1)[0]
    return {int(code) for code in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)}


def test_the_supervision_tables_list_every_exit_status_of_a_worker() -> None:
    worker = {0, EXIT_PROBLEM, EXIT_USAGE, EXIT_NO_DATABASE, EXIT_FORCED}
    assert _statuses("deployment.md", "## Supervision") == worker
    assert _statuses("workers.md", "### Supervision") == worker


def test_the_cli_exit_code_table_lists_every_code() -> None:
    assert _statuses("installation.md", "## Exit codes") == {
        0,
        EXIT_PROBLEM,
        EXIT_USAGE,
        EXIT_NO_DATABASE,
    }


def test_the_systemd_unit_does_not_restart_a_configuration_mistake() -> None:
    unit = (DOCS / "deployment.md").read_text().split("### systemd", 1)[1]
    assert f"RestartPreventExitStatus={EXIT_USAGE}" in unit
    assert "Restart=on-failure" in unit
