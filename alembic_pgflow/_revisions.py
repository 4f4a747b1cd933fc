"""The ``pgflow`` schema branch next to the application's own revisions.

The schema revisions ship in this package (``alembic_pgflow:versions``, branch label
``pgflow``). A second branch means a second head, which makes ``alembic revision`` ask for
``--head`` and could put a new revision into this package's directory;
:func:`process_revision_directives` avoids both and makes revisions with flow operations
depend on the schema branch, so ``alembic upgrade heads`` installs the schema first.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from alembic.operations import MigrateOperation, ops
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError, coerce_resource_to_filename

from alembic_pgflow._ops import CreateFlowOp, DropFlowOp, UpdateFlowOptionsOp

SCHEMA_BRANCH = "pgflow"
"""Branch label of the schema revisions: ``alembic upgrade pgflow@head`` installs only them."""

# Schemas the pgflow installer owns. Alembic must never autogenerate DROP TABLEs for them when
# an application compares with include_schemas=True.
PGFLOW_SCHEMAS = frozenset({"pgflow", "pgflow_python", "pgmq", "realtime"})


def version_location() -> str:
    """Absolute path of the schema revisions, for ``version_locations`` set from Python.

    In alembic.ini the package form ``alembic_pgflow:versions`` works too, with
    ``path_separator = newline`` (the default ``os`` separator is a colon on POSIX).
    """
    return str(Path(__file__).resolve().parent / "versions")


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """An ``include_name`` hook that keeps autogenerate away from pgflow's schemas.

    Needed only with ``include_schemas=True``; chain it with your own hook if you have one.
    """
    return not (type_ == "schema" and name in PGFLOW_SCHEMAS)


def process_revision_directives(
    context: MigrationContext, revision: Any, directives: list[ops.MigrationScript]
) -> None:
    """Pass as ``context.configure(process_revision_directives=...)`` (or call from yours).

    For every new revision: when no ``--head`` was given, base it on the application's own head
    (never on the pgflow branch) and write it into the application's version directory; when it
    holds flow operations, make it depend on the pgflow schema branch's head.
    """
    script = context.script
    if script is None:
        return
    head = schema_head(script)
    if head is None:
        return  # the schema branch is not in version_locations: nothing to steer around
    for directive in directives:
        if directive.head in (None, "head"):  # no --head given (the CLI passes None)
            _retarget(directive, script)
        if directive.version_path is None:
            _choose_version_path(directive, script)
        if any(_flow_operations(directive)):
            _depend_on(directive, head)


def schema_head(script: ScriptDirectory) -> str | None:
    """The newest schema revision this package ships, if version_locations includes them."""
    ours = [revision.revision for revision in script.walk_revisions() if _shipped(revision)]
    # Ours form one chain named pgflow_0001, pgflow_0002, ...: the greatest id is the newest.
    return max(ours) if ours else None


def _shipped(revision: Script) -> bool:
    """Whether ``revision`` is one of ours (by location: a merge of both lines is the user's)."""
    return Path(revision.path).resolve().parent == Path(version_location())


def _retarget(directive: ops.MigrationScript, script: ScriptDirectory) -> None:
    heads = script.get_heads()
    own = [head for head in heads if not _shipped(script.get_revision(head))]
    if len(own) == 1:
        directive.head = own[0]
    elif not own:
        directive.head = "base"  # the application's first revision
    # Several heads of the application's own: Alembic asks which one, as usual.


def _choose_version_path(directive: ops.MigrationScript, script: ScriptDirectory) -> None:
    """The directory of the first head that is the application's (Alembic takes the first
    head's, which may be ours, e.g. in ``alembic merge pgflow@head <yours>``)."""
    try:
        heads = script.get_revisions(directive.head or "head")
    except (RevisionError, CommandError):
        return  # Alembic reports the bad --head itself
    for head in heads:
        if isinstance(head, Script) and not _shipped(head):
            directive.version_path = str(Path(head.path).parent)
            return
    directive.version_path = _own_version_location(script)


def _own_version_location(script: ScriptDirectory) -> str:
    ours = Path(version_location())
    for location in script.version_locations or [script.versions]:
        path = coerce_resource_to_filename(str(location)).resolve()
        if path != ours:
            return str(path)
    raise CommandError(
        "version_locations lists only alembic_pgflow's schema revisions; add your own "
        "directory first (see docs/alembic.md, 'alembic.ini')"
    )


def _depend_on(directive: ops.MigrationScript, revision: str) -> None:
    existing = directive.depends_on
    current = [existing] if isinstance(existing, str) else list(existing or [])
    if revision not in current:
        directive.depends_on = [*current, revision]


def _flow_operations(directive: ops.MigrationScript) -> Iterator[MigrateOperation]:
    for container in directive.upgrade_ops_list:
        yield from _walk(container.ops)


def _walk(operations: Iterable[MigrateOperation]) -> Iterator[MigrateOperation]:
    for operation in operations:
        if isinstance(operation, CreateFlowOp | DropFlowOp | UpdateFlowOptionsOp):
            yield operation
        nested = getattr(operation, "ops", None)
        if nested is not None:
            yield from _walk(nested)
