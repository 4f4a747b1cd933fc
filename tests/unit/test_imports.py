"""What importing a module costs: checked in a fresh interpreter, where sys.modules is honest."""

from __future__ import annotations

import subprocess
import sys


def modules_loaded_by(statement: str) -> set[str]:
    script = f"import sys\n{statement}\nprint('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(result.stdout.split())


def test_the_testing_helpers_do_not_import_pytest() -> None:
    loaded = modules_loaded_by("import pgflow.testing")
    assert "pytest" not in loaded
    assert "_pytest" not in loaded


def test_the_pytest_plugin_provides_the_database_fixtures() -> None:
    loaded = modules_loaded_by("import pgflow.pytest_plugin as p; assert p.pgflow_engine")
    assert "pgflow.testing" in loaded
