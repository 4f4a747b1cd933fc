"""The README's install lines, run as written: a fresh clone, a fresh virtualenv, then the
``pgflow`` command they installed against a database of the test's own."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.helpers import database, docs

ROOT = Path(__file__).resolve().parents[2]


def _readme_install_block() -> docs.Console:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Installing\n", 1)[1].split("\n## ", 1)[0]
    return docs.console(section.split("```console\n", 1)[1].split("```", 1)[0])


@pytest.mark.slow
def test_the_readme_install_lines_work_from_a_fresh_clone(
    tmp_path: Path, pgflow_empty_database: URL
) -> None:
    # The committed tree, as a user's clone would have it (no fetched SQL, no .venv).
    clone = ["git", "clone", "--quiet", str(ROOT), "pgflow-python"]
    subprocess.run(clone, cwd=tmp_path, check=True)
    assert not list((tmp_path / "pgflow-python" / "pgflow" / "schema").glob("upstream/*.sql"))

    install = _readme_install_block()
    ours = database.libpq_url(pgflow_empty_database)
    commands = [
        re.sub(r"^export DATABASE_URL=\S+", f"export DATABASE_URL={ours}", c)
        for c in install.commands
    ]
    # Grants need roles on the shared server: tests/integration/test_worker_access.py runs
    # `pgflow db grant` against roles of its own.
    assert commands[-1].startswith("pgflow db grant ")
    script = "set -euo pipefail\n" + "\n".join(commands[:-1])
    environment = {k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "DATABASE_URL"}}
    result = subprocess.run(
        ["bash", "-c", script],
        check=False,
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=900,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{script}\n--- output:\n{output}"
    assert (tmp_path / ".venv" / "bin" / "pgflow").exists()
    assert re.search(r"^pending +nothing$", output, re.MULTILINE), output
    assert database.scalar(pgflow_empty_database, "SELECT count(*) FROM pgflow.flows") == 0
    assert database.scalar(
        pgflow_empty_database, "SELECT to_regprocedure('pgflow.start_flow(text, jsonb, uuid)')"
    )
