"""The import graph of the library: acyclic, the definitions at the bottom import no feature, and
no package imports another package's private modules (the rule is stated above its test).

Built from the source, not from ``sys.modules``: every ``import`` at any depth (inside functions
too, where lazy imports hide), each import also importing the packages above the imported module
(their ``__init__`` runs first); imports under ``if TYPE_CHECKING:`` are left out (never run).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("pgflow", "alembic_pgflow")

# The bottom of the tree: values, definitions and the DSL that builds them.
DEFINITION_MODULES = (
    "pgflow.definition",
    "pgflow.dsl",
    "pgflow.dsl_subflow",
    "pgflow.cron",
    "pgflow.compiler",
)
FEATURE_PACKAGES = (
    "pgflow.client",
    "pgflow.worker",
    "pgflow.schedules",
    "pgflow.operations",
    "pgflow.dashboard",
    "pgflow.cli",
)


def module_files() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports_that_run(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for orelse in child.orelse:
                yield from _imports_that_run(orelse)
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        yield from _imports_that_run(child)


def _with_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:end]) for end in range(1, len(parts) + 1)}


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    """The library modules that importing ``module`` imports directly (parents included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    targets: set[str] = set()
    for node in _imports_that_run(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join([*anchor, base] if base else anchor)
        targets.add(base)
        targets.update(f"{base}.{alias.name}" for alias in node.names)
    imported: set[str] = set()
    for target in targets:
        imported |= _with_parents(target)
    # A module's own packages are already imported when its code runs: not an arrow of its own.
    return (imported & known) - _with_parents(module)


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    known = set(files)
    return {module: imports_of(module, path, known) for module, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_sees_lazy_imports_and_skips_type_checking_blocks() -> None:
    graph = import_graph()
    # pgflow/__init__ imports the worker only lazily (importlib) or under TYPE_CHECKING.
    assert "pgflow.worker" not in graph["pgflow"]
    assert "pgflow.dsl" in graph["pgflow"]
    # The CLI imports the worker inside its command function.
    assert any(_in(target, "pgflow.worker") for target in graph["pgflow.cli.worker"])


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(import_graph()) == []


def test_the_definitions_and_the_dsl_import_no_feature_package() -> None:
    graph = import_graph()
    upward = {
        (module, target)
        for module in DEFINITION_MODULES
        for target in graph.get(module, set())
        if any(_in(target, package) for package in FEATURE_PACKAGES)
    }
    assert upward == set()


def test_the_modules_checked_exist() -> None:
    graph = import_graph()
    assert set(DEFINITION_MODULES) <= set(graph)
    assert all(package in graph for package in FEATURE_PACKAGES)


# -- privacy: a package's private modules and names are its own ---------------------------------
#
# The rule: a dotted name's first segment that starts with "_" (after the top-level package) is
# private to the package holding it: ``pgflow.worker._startup`` and ``pgflow.worker._worker._x``
# to ``pgflow.worker``, ``pgflow.dsl._condition`` (a private name of a module) to ``pgflow``.
# Only modules inside that package import it. Top-level ``pgflow._x`` modules (``_db``, ``_sql``,
# ``_binds``, ...) are the shared plumbing below the features (DESIGN.md §2): every product module
# may import them, ``alembic_pgflow`` included. Every import counts here, also those under
# ``if TYPE_CHECKING:`` (a private type couples as much as a private function). Tests may import
# anything: only the product's packages are read.

# Imports of another package's private module or name that are deliberate, with the reason.
# Keep it empty unless there is no public or shared seam to give instead.
PRIVATE_IMPORTS_ALLOWED: dict[tuple[str, str], str] = {}


def _all_imports(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """Every name ``module`` imports from the library, TYPE_CHECKING blocks included, with
    the line: ``pgflow.worker._startup`` for a module, ``pgflow.worker._worker.name`` for a
    name imported from one."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, node.lineno
            for alias in node.names:
                yield f"{base}.{alias.name}", node.lineno


def private_owner(name: str, packages: set[str]) -> str | None:
    """The package a private dotted name belongs to, or None for a public name."""
    parts = name.split(".")
    for end in range(1, len(parts)):
        if parts[end].startswith("_") and not parts[end].startswith("__"):
            owner = ".".join(parts[:end])
            # A private name of a module belongs to the module's package.
            return owner if owner in packages else owner.rpartition(".")[0]
    return None


def private_imports(files: dict[str, Path]) -> set[tuple[str, str, int]]:
    """(importer, imported, line) for each import of another package's private module or name."""
    packages = {module for module, path in files.items() if path.name == "__init__.py"}
    found: set[tuple[str, str, int]] = set()
    for module, path in files.items():
        for name, line in _all_imports(module, path):
            if name.partition(".")[0] not in PACKAGES:
                continue
            owner = private_owner(name, packages)
            if owner is None or _in(module, owner):
                continue
            if owner == "pgflow" and name.split(".")[1].startswith("_"):
                continue  # a top-level pgflow._x module: shared plumbing
            if (module, name) in PRIVATE_IMPORTS_ALLOWED:
                continue
            found.add((module, name, line))
    return found


def test_no_package_imports_another_packages_private_modules() -> None:
    assert sorted(private_imports(module_files())) == []


def test_the_privacy_rule_sees_what_it_must(tmp_path: Path) -> None:
    """The rule on made-up modules: what it refuses and what it lets through."""
    sources = {
        "pgflow/__init__.py": "",
        "pgflow/_db.py": "",
        "pgflow/dsl.py": "def _condition(): ...\n",
        "pgflow/dsl_subflow.py": "from pgflow.dsl import _condition\n",
        "pgflow/worker/__init__.py": "from pgflow.worker._worker import Worker\n",
        "pgflow/worker/_worker.py": "from pgflow import _db\nfrom ._startup import check\n",
        "pgflow/worker/_startup.py": "",
        "pgflow/testing.py": "def f():\n    from pgflow.worker._startup import check\n",
        "pgflow/client/__init__.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from pgflow.worker import _hidden\n"
        ),
        "alembic_pgflow/__init__.py": "from pgflow._db import create_engine\n",
        "alembic_pgflow/_ops.py": (
            "from pgflow.dsl import _condition\nimport pgflow.worker._worker\n"
        ),
    }
    files: dict[str, Path] = {}
    for relative, text in sources.items():
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        parts = list(Path(relative).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    assert {(importer, imported) for importer, imported, _ in private_imports(files)} == {
        ("pgflow.testing", "pgflow.worker._startup"),
        ("pgflow.testing", "pgflow.worker._startup.check"),
        ("pgflow.client", "pgflow.worker._hidden"),
        ("alembic_pgflow._ops", "pgflow.dsl._condition"),
        ("alembic_pgflow._ops", "pgflow.worker._worker"),
    }
