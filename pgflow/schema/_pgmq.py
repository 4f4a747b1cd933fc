"""pgmq: which of the three install modes applies here, and registering the bundled SQL.

Prefer the server's own pgmq extension (docs/installation.md); else register the bundled SQL as an
extension where the server's extension directory is writable from here (a local or embedded
server); else install it as plain SQL.
"""

from __future__ import annotations

import os
import tempfile
from enum import StrEnum
from pathlib import Path

from sqlalchemy.engine import Connection

from pgflow._sql import query
from pgflow.schema._sources import SqlFile

# Marks control files written by us, so we never overwrite another installation's pgmq.
_CONTROL_MARKER = "# written by pgflow-python from the bundled pgmq SQL"


class PgmqMode(StrEnum):
    """How pgmq is installed in a database."""

    EXTENSION = "extension"
    """The server's own pgmq extension (``CREATE EXTENSION pgmq``)."""
    REGISTERED = "registered"
    """The bundled SQL, registered as an extension in the server's extension directory."""
    PLAIN = "plain"
    """The bundled SQL run as plain SQL (no extension; one upstream statement skipped)."""


def _control_text(version: str) -> str:
    return (
        f"{_CONTROL_MARKER}\n"
        "comment = 'A lightweight message queue. Like AWS SQS and RSMQ but on Postgres.'\n"
        f"default_version = '{version}'\n"
        "schema = 'pgmq'\n"
        "relocatable = false\n"
        "superuser = false\n"
        "trusted = true\n"
    )


def extension_directory(connection: Connection) -> Path | None:
    """The server's extension directory when this process can write to it, else None."""
    facts = connection.execute(query("server_facts")).mappings().one()
    if not facts["is_superuser"]:
        return None  # pg_config is superuser-only, and so is a trusted=false fallback
    sharedir = connection.execute(query("server_sharedir")).scalar_one()
    directory = Path(sharedir) / "extension"
    if directory.is_dir() and os.access(directory, os.W_OK):
        return directory
    return None


def registered_by_us(connection: Connection) -> bool:
    """True when the server's pgmq extension is our registration of the bundled SQL."""
    directory = extension_directory(connection)
    control = directory / "pgmq.control" if directory else None
    return control is not None and control.exists() and _CONTROL_MARKER in control.read_text()


def _write_atomically(path: Path, text: str) -> None:
    # Installers in different databases of one server do not share the advisory lock.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
        tmp.write(text)
    Path(tmp.name).chmod(0o644)
    Path(tmp.name).replace(path)


def register(connection: Connection, directory: Path, version: str, sql: SqlFile) -> bool:
    """Write control + script into ``directory``; True when the server then offers the version.

    Files are only written where absent or ours; when the server does not see them (the
    directory belongs to another server), the files we wrote are removed again.
    """
    control = directory / "pgmq.control"
    script = directory / f"pgmq--{version}.sql"
    if control.exists() and _CONTROL_MARKER not in control.read_text(errors="replace"):
        return False
    created = [p for p in (control, script) if not p.exists()]
    if not control.exists() or control.read_text() != _control_text(version):
        _write_atomically(control, _control_text(version))
    if not script.exists() or script.read_text() != sql.sql:
        _write_atomically(script, sql.sql)
    if connection.execute(query("pgmq_version_available"), {"version": version}).scalar_one():
        return True
    for path in created:
        path.unlink(missing_ok=True)
    return False
