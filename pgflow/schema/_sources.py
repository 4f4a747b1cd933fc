"""The SQL the installer applies, loaded from package data and checked against pins.json."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from pgflow.errors import SchemaFilesError

_FETCH_HINT = "run `make setup` (or `python scripts/fetch_upstream.py` in a source checkout)"

# The single transformation ever made to upstream SQL (docs/installation.md): when pgmq is installed
# as plain SQL there is no pgmq extension to create, so this one statement is skipped.
PLAIN_PGMQ_SKIPPED_MIGRATION = "20250429164909_pgflow_initial.sql"
PLAIN_PGMQ_SKIPPED_STATEMENT = 'CREATE EXTENSION IF NOT EXISTS "pgmq" WITH SCHEMA "pgmq";'


@dataclass(frozen=True)
class SqlFile:
    name: str
    sql: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


@cache
def pins() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        files("pgflow.schema").joinpath("pins.json").read_text(encoding="utf-8")
    )
    return loaded


def upstream_version() -> str:
    return str(pins()["pgflow_core"]["version"])


def upstream_directory() -> Path:
    """Where setup/build put the fetched upstream migrations (git-ignored package data)."""
    return Path(str(files("pgflow.schema").joinpath("upstream")))


def upstream_migrations(directory: Path | None = None) -> list[SqlFile]:
    """The pinned upstream migrations in file-name order; a missing or changed file is an error."""
    expected: dict[str, str] = pins()["pgflow_core"]["migrations"]
    root = directory or upstream_directory()
    migrations = []
    for name in sorted(expected):
        path = root / name
        if not path.is_file():
            raise SchemaFilesError(
                f"upstream pgflow SQL is missing ({path} not found): {_FETCH_HINT}"
            )
        migration = SqlFile(name, path.read_bytes().decode())
        if migration.sha256 != expected[name]:
            raise SchemaFilesError(
                f"{path} does not match its pinned sha256 (the file was modified): {_FETCH_HINT}"
            )
        migrations.append(migration)
    return migrations


def without_pgmq_extension(migration: SqlFile) -> SqlFile:
    """``migration`` with the declared statement skipped, for plain-SQL pgmq (else unchanged)."""
    if migration.name != PLAIN_PGMQ_SKIPPED_MIGRATION:
        return migration
    if migration.sql.count(PLAIN_PGMQ_SKIPPED_STATEMENT) != 1:
        raise SchemaFilesError(
            f"{migration.name}: expected exactly one {PLAIN_PGMQ_SKIPPED_STATEMENT!r} to skip"
        )
    sql = migration.sql.replace(
        PLAIN_PGMQ_SKIPPED_STATEMENT,
        "-- skipped by pgflow-python: pgmq is installed as plain SQL",
    )
    return SqlFile(migration.name, sql)


def bundled_pgmq() -> tuple[str, SqlFile]:
    """``(version, sql)`` of the pgmq SQL shipped in the PyPI ``pgmq`` package, hash checked."""
    pin = pins()["pgmq"]
    try:
        text = files("pgmq").joinpath("sql", "pgmq.sql").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise SchemaFilesError(
            f"the bundled pgmq SQL is missing ({exc}): "
            f"pip install {pin['pypi_package']}=={pin['pypi_version']}"
        ) from exc
    sql = SqlFile(f"pgmq--{pin['sql_version']}.sql", text)
    if sql.sha256 != pin["sql_sha256"]:
        raise SchemaFilesError(
            f"the pgmq SQL in the installed `pgmq` package does not match the pin "
            f"(expected pgmq {pin['sql_version']}): "
            f"pip install {pin['pypi_package']}=={pin['pypi_version']}"
        )
    return str(pin["sql_version"]), sql


def own_sql(name: str) -> SqlFile:
    return SqlFile(name, files("pgflow.schema").joinpath("sql", name).read_text(encoding="utf-8"))


def extension_migrations() -> list[SqlFile]:
    """Our additive SQL, applied in file-name order after upstream's."""
    folder = files("pgflow.schema").joinpath("sql", "extension")
    names = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [SqlFile(name, folder.joinpath(name).read_text(encoding="utf-8")) for name in names]
