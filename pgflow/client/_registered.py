"""A start that names a class checks it against the stored flow, once per process per flow.

The worker refuses to serve a class whose shape differs from the database's flow; a start must
not quietly create a run of the old shape either. The check reads the catalogue, so it runs at
the first start of each (database, flow definition) in this process and is remembered when it
passes; a refusal is not remembered, so a migration applied later lets the next start through.
"""

from __future__ import annotations

import threading

from sqlalchemy.engine import URL, Connection

from pgflow._registered import check_registered, stored_rows
from pgflow.definition import FlowDefinition

_checked: set[tuple[URL, FlowDefinition]] = set()
_lock = threading.Lock()


def check_definition_once(connection: Connection, definition: FlowDefinition) -> None:
    key = (connection.engine.url, definition)
    with _lock:
        if key in _checked:
            return
    rows = stored_rows(connection, definition.slug)
    if not rows:
        return  # not stored: the start itself says so (FlowNotRegisteredError)
    check_registered(connection, definition, rows, by="client")
    with _lock:
        _checked.add(key)
