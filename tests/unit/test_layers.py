"""The import graph of the library: acyclic, and the definitions at the bottom import no feature.

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
