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
