"""Install or adopt the pgflow schema in one transaction, serialised by an advisory lock."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg
from sqlalchemy.engine import Connection

from pgflow._db import Bind, transaction
from pgflow._sql import query
from pgflow.errors import IncompatibleSchemaError, InsufficientPrivilegeError, SchemaError
from pgflow.schema import _pgmq, _sources
from pgflow.schema._pgmq import PgmqMode
from pgflow.schema._state import DatabaseState, classify_upstream, read_state

MIN_SERVER_VERSION = 140000


@dataclass(frozen=True)
class InstallReport:
    """What :func:`install` did. ``applied`` and ``adopted`` list ``component/name`` items."""

    pgmq_mode: PgmqMode
    applied: tuple[str, ...] = ()
    adopted: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.applied or self.adopted)

    def render(self) -> str:
        if not self.changed:
            return f"pgflow schema is up to date (pgmq mode: {self.pgmq_mode})"
        lines = [f"pgmq mode: {self.pgmq_mode}"]
        lines += [f"applied  {item}" for item in self.applied]
        lines += [f"adopted  {item}" for item in self.adopted]
        return "\n".join(lines)


@dataclass
class _Run:
    connection: Connection
    state: DatabaseState
    applied: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)

    def record(self, component: str, sql: _sources.SqlFile, how: str) -> None:
        self.connection.execute(
            query("record_item"),
            {"component": component, "name": sql.name, "sha256": sql.sha256, "how": how},
        )
        (self.adopted if how == "adopted" else self.applied).append(f"{component}/{sql.name}")

    def apply(
        self,
        component: str,
        sql: _sources.SqlFile,
        *,
        how: str = "applied",
        recorded_as: _sources.SqlFile | None = None,
    ) -> None:
        """Run ``sql`` and record it (or ``recorded_as``: the pinned file it was derived from)."""
        try:
            run_script(self.connection, sql.sql)
        except psycopg.Error as exc:
            reason = str(exc).strip()
            raise SchemaError(f"applying {component}/{sql.name} failed: {reason}") from exc
        self.record(component, recorded_as or sql, how)


def install(bind: Bind, *, pgmq_mode: PgmqMode | str | None = None) -> InstallReport:
    """Install pgmq, the realtime shim, upstream pgflow and our extension SQL where missing.

    Idempotent and all-or-nothing. With a ``Connection`` it runs inside the caller's transaction
    (Alembic does this); with an engine or URL it commits its own. ``pgmq_mode`` forces one of
    the three pgmq modes; by default the best available is chosen (see :class:`PgmqMode`).
    """
    forced = PgmqMode(pgmq_mode) if pgmq_mode is not None else None
    with transaction(bind) as connection:
        facts = connection.execute(query("server_facts")).mappings().one()
        if facts["version_num"] < MIN_SERVER_VERSION:
            raise SchemaError(f"PostgreSQL {facts['version']} is too old: pgflow needs 14 or newer")
        connection.execute(query("lock_installer"))
        state = read_state(connection)
        if forced is not None and state.pgmq_mode not in (None, forced):
            raise SchemaError(
                f"pgmq is already installed in mode {state.pgmq_mode}; cannot switch to {forced}"
            )
        upstream_plan = classify_upstream(state)
        if state.nothing_to_do(upstream_plan):
            return InstallReport(pgmq_mode=state.pgmq_mode or PgmqMode.PLAIN)
        if not facts["can_create"]:
            raise InsufficientPrivilegeError(
                f"role {facts['role']!r} may not create schemas in database {facts['database']!r}: "
                "run `pgflow db install` as the database owner or a superuser, or "
                f'GRANT CREATE ON DATABASE "{facts["database"]}" TO "{facts["role"]}"'
            )
        run_script(connection, _sources.own_sql("bookkeeping.sql").sql)
        run = _Run(connection, state)
        mode = _install_pgmq(run, forced)
        _install_realtime(run)
        for migration in upstream_plan.to_adopt:
            run.record("upstream", migration, "adopted")
        for migration in upstream_plan.to_apply:
            runnable = (
                _sources.without_pgmq_extension(migration) if mode is PgmqMode.PLAIN else migration
            )
            run.apply("upstream", runnable, recorded_as=migration)
        for extension_sql in state.pending_extension():
            run.apply("extension", extension_sql)
        # No function of ours is executable by PUBLIC, whichever file created it.
        run_script(connection, _sources.own_sql("function_privileges.sql").sql)
        return InstallReport(mode, tuple(run.applied), tuple(run.adopted))


def _install_pgmq(run: _Run, forced: PgmqMode | None) -> PgmqMode:
    state = run.state
    version, bundled = _sources.bundled_pgmq()
    if state.pgmq_mode is not None:
        if not state.pgmq_recorded:
            found = _sources.SqlFile(f"pgmq {state.pgmq_extension_version or '(plain SQL)'}", "")
            run.record("pgmq", found, "adopted")
        return state.pgmq_mode
    if state.pgflow_schema_present:
        raise IncompatibleSchemaError(
            "schema pgflow exists but pgmq is not installed: this database is damaged; "
            "restore pgmq (CREATE EXTENSION pgmq) before running the installer"
        )
    server_has_own_pgmq = state.pgmq_available_version is not None and (
        forced is PgmqMode.EXTENSION or not _pgmq.registered_by_us(run.connection)
    )
    if forced in (None, PgmqMode.EXTENSION) and server_has_own_pgmq:
        run.record("pgmq", bundled, "extension")  # created by upstream's first migration
        return PgmqMode.EXTENSION
    if forced is PgmqMode.EXTENSION:
        raise SchemaError(
            "pgmq mode 'extension' was asked for, but this server offers no pgmq extension"
        )
    if forced in (None, PgmqMode.REGISTERED):
        directory = _pgmq.extension_directory(run.connection)
        if directory is not None and _pgmq.register(run.connection, directory, version, bundled):
            run.record("pgmq", bundled, "registered")
            return PgmqMode.REGISTERED
        if forced is PgmqMode.REGISTERED:
            raise SchemaError(
                "pgmq mode 'registered' needs a superuser connection to a server whose extension "
                "directory this process can write (a local or embedded server)"
            )
    run.apply("pgmq", bundled, how="plain")
    return PgmqMode.PLAIN


def _install_realtime(run: _Run) -> None:
    shim = _sources.own_sql("realtime_shim.sql")
    if not run.state.realtime_pending():
        return  # ours and current, or a real realtime service (Supabase) owns realtime.send
    recorded = run.state.recorded.get(("realtime", shim.name))
    if recorded is not None:
        run.connection.execute(query("forget_item"), {"component": "realtime", "name": shim.name})
    run.apply("realtime", shim)


def run_script(connection: Connection, script: str) -> None:
    """Run a multi-statement script in the connection's current transaction.

    Goes to psycopg directly: without parameters it uses the simple query protocol, which
    accepts many statements (and ``%`` signs) in one call; SQLAlchemy's text() would not.
    """
    driver_connection = connection.connection.driver_connection
    if driver_connection is None:
        raise RuntimeError("the SQLAlchemy connection has no open driver connection")
    driver_connection.execute(script)
