"""The extension SQL's rules (pgflow/schema/sql/extension/README.md), checked without a server."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

from pgflow.schema._sources import extension_migrations

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ROOT / "alembic_pgflow" / "versions"


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _schema_revisions() -> dict[str, ModuleType]:
    return {path.stem: _load(path) for path in sorted(VERSIONS.glob("pgflow_*.py"))}


def _newest(revisions: dict[str, ModuleType]) -> ModuleType:
    parents = {getattr(module, "down_revision", None) for module in revisions.values()}
    heads = [m for m in revisions.values() if getattr(m, "revision", None) not in parents]
    assert len(heads) == 1, "the pgflow branch has one head"
    return heads[0]


def test_every_extension_file_is_applied_by_the_newest_schema_revision() -> None:
    names = [sql.name for sql in extension_migrations()]
    newest = _newest(_schema_revisions())
    assert getattr(newest, "EXTENSION_THROUGH", None) == names[-1], (
        f"{names[-1]} is newer than what {newest.__name__} ships: move its EXTENSION_THROUGH "
        "forward while it is unreleased, or add a revision (see extension/README.md)"
    )
    # It applies them through the installer, which applies every file not yet recorded.
    source = Path(str(newest.__file__)).read_text()
    assert "upgrade_schema()" in source


def test_extension_files_are_numbered_once_in_order() -> None:
    names = [sql.name for sql in extension_migrations()]
    numbers = [re.match(r"(\d{4})_[a-z0-9_]+\.sql$", name) for name in names]
    assert all(numbers), names
    values = [match.group(1) for match in numbers if match]
    assert values == sorted(set(values))


# -- "Product SQL only": every function of ours has a caller -------------------------------------

EXTENSION = ROOT / "pgflow" / "schema" / "sql" / "extension"
_CREATED = re.compile(r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+pgflow_python\.(\w+)", re.I)
# What names a function without calling it: its own definition's header, its comment, changes
# of its attributes, grants, drops.
_NOT_A_CALL = re.compile(
    r"CREATE\s+(?:OR\s+REPLACE\s+)?FUNCTION\s+pgflow_python\.\w+"
    r"|(?:COMMENT\s+ON|ALTER|DROP)\s+FUNCTION\s+(?:IF\s+EXISTS\s+)?pgflow_python\.\w+"
    r"|\b(?:GRANT|REVOKE)\b[^;]*;",
    re.I,
)


def _without_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def _product_text() -> str:
    """The library's Python and named queries, where the library calls SQL functions."""
    paths = [*(ROOT / "pgflow").rglob("*.py"), *(ROOT / "alembic_pgflow").rglob("*.py")]
    paths += sorted((ROOT / "pgflow" / "sql").glob("*.sql"))
    return "\n".join(path.read_text() for path in paths)


def functions_without_a_caller(extension_sql: str, product: str) -> set[str]:
    created = set(_CREATED.findall(extension_sql))
    calls = _NOT_A_CALL.sub("", _without_comments(extension_sql))
    uncalled = set()
    for name in created:
        qualified = re.compile(rf"pgflow_python\.{name}\b")
        # Called by our SQL (a call, a trigger's EXECUTE FUNCTION, a name in dynamic SQL) or by
        # the library (its named queries, the compiler's statements).
        if qualified.search(calls) or f"'{name}'" in calls or qualified.search(product):
            continue
        uncalled.add(name)
    return uncalled


def test_every_function_of_the_extension_has_a_caller() -> None:
    extension_sql = "\n".join(path.read_text() for path in sorted(EXTENSION.glob("*.sql")))
    assert functions_without_a_caller(extension_sql, _product_text()) == set(), (
        "SQL that no release calls leaves the schema (extension/README.md: Product SQL only)"
    )


def test_a_function_named_only_by_its_own_definition_has_no_caller() -> None:
    sql = (
        "CREATE OR REPLACE FUNCTION pgflow_python.lonely() RETURNS void LANGUAGE sql AS $$ $$;\n"
        "COMMENT ON FUNCTION pgflow_python.lonely() IS 'x';\n"
        "GRANT EXECUTE ON FUNCTION pgflow_python.lonely() TO someone;\n"
        "-- pgflow_python.lonely() is called by nobody\n"
        "CREATE FUNCTION pgflow_python.fired() RETURNS trigger LANGUAGE plpgsql AS $$ $$;\n"
        "CREATE TRIGGER t AFTER INSERT ON x EXECUTE FUNCTION pgflow_python.fired();\n"
        "CREATE FUNCTION pgflow_python.used() RETURNS void LANGUAGE sql AS $$ $$;\n"
    )
    product = "SELECT pgflow_python.used();"
    assert functions_without_a_caller(sql, product) == {"lonely"}
