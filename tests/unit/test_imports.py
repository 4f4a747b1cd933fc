"""What importing a module costs: checked in a fresh interpreter, where sys.modules is honest."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import pgflow
from pgflow import errors


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


def test_defining_a_flow_imports_no_database_stack() -> None:
    loaded = modules_loaded_by("from pgflow import Context, Flow, Job, map_step, step")
    heavy = {"sqlalchemy", "psycopg", "anyio", "alembic", "structlog"}
    assert {name.split(".")[0] for name in loaded} & heavy == set()


def test_the_entry_points_resolve_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name in pgflow.__all__:
            assert getattr(pgflow, name) is not None
    assert pgflow.Worker is importlib.import_module("pgflow.worker").Worker
    assert pgflow.start_flow is importlib.import_module("pgflow.client").start_flow


@pytest.mark.parametrize(
    ("module", "name", "new_module"),
    [
        ("pgflow", "install", "pgflow.schema"),
        ("pgflow", "compile_flow", "pgflow.compiler"),
        ("pgflow", "FlowDefinition", "pgflow.definition"),
        ("pgflow", "RunFailedError", "pgflow.errors"),
        ("pgflow.client", "UnknownRunError", "pgflow.errors"),
        ("alembic_pgflow", "FlowShapeChangedError", "alembic_pgflow.errors"),
    ],
)
def test_names_that_moved_still_import_with_a_deprecation_warning(
    module: str, name: str, new_module: str
) -> None:
    with pytest.warns(DeprecationWarning, match=f"import it from {new_module}"):
        value = getattr(importlib.import_module(module), name)
    assert value is getattr(importlib.import_module(new_module), name)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'Nonexistent'"):
        _ = pgflow.Nonexistent


def _exception_classes_defined_in(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
        and any(
            isinstance(base, ast.Name) and base.id.endswith(("Error", "Exception"))
            for base in node.bases
        )
    ]


def test_every_exception_is_defined_in_an_errors_module() -> None:
    root = Path(pgflow.__file__).parent.parent
    elsewhere = {
        str(path.relative_to(root)): classes
        for package in ("pgflow", "alembic_pgflow")
        for path in sorted((root / package).rglob("*.py"))
        if path.name != "errors.py" and (classes := _exception_classes_defined_in(path))
    }
    assert elsewhere == {}
    # Every error pgflow raises is a PgflowError; NonRetryableError is the one handlers raise.
    for name in dir(errors):
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, errors.PgflowError) or value is errors.NonRetryableError, name
