"""Read what a database holds, and decide what the installer must apply or adopt."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from sqlalchemy.engine import Connection

from pgflow._sql import query
from pgflow.errors import IncompatibleSchemaError
from pgflow.schema import _sources
from pgflow.schema._pgmq import PgmqMode

# Function names in schema pgflow once @pgflow/core 0.8.1 is fully applied. A database that
# upstream's own tooling installed is recognised by this fingerprint and adopted, not re-applied.
UPSTREAM_081_FUNCTIONS = frozenset(
    {
        "add_step",
        "calculate_retry_delay",
        "cascade_complete_taskless_steps",
        "complete_task",
        "create_flow",
        "fail_task",
        "get_run_with_states",
        "is_valid_slug",
        "maybe_complete_run",
        "poll_for_tasks",
        "set_vt_batch",
        "start_flow",
        "start_flow_with_states",
        "start_ready_steps",
        "start_tasks",
    }
)
# Dropped by 0.8.1's last migration: present only in older schemas.
UPSTREAM_PRE_081_FUNCTIONS = frozenset({"read_with_poll"})
# What pgflow-python calls at run time, as installer.sql's runtime_signatures prints it. Another
# upstream release changes some of these (e.g. a flow_input column in step_task_record).
UPSTREAM_081_SIGNATURES = frozenset(
    {
        "pgflow.start_tasks(text,bigint[],uuid) -> SETOF pgflow.step_task_record",
        "pgflow.complete_task(uuid,text,integer,jsonb) -> SETOF pgflow.step_tasks",
        "pgflow.fail_task(uuid,text,integer,text) -> SETOF pgflow.step_tasks",
        "pgflow.set_vt_batch(text,bigint[],integer[]) -> TABLE(msg_id bigint, read_ct integer, "
        "enqueued_at timestamp with time zone, vt timestamp with time zone, message jsonb, "
        "headers jsonb)",
        "pgflow.start_flow(text,jsonb,uuid) -> SETOF pgflow.runs",
        "pgflow.start_flow_with_states(text,jsonb,uuid) -> jsonb",
        "pgflow.get_run_with_states(uuid) -> jsonb",
        "pgflow.step_task_record(flow_slug text, run_id uuid, step_slug text, input jsonb, "
        "msg_id bigint, task_index integer)",
    }
)


class Recorded(NamedTuple):
    sha256: str
    how: str


@dataclass(frozen=True)
class UpstreamPlan:
    to_apply: tuple[_sources.SqlFile, ...] = ()
    to_adopt: tuple[_sources.SqlFile, ...] = ()


@dataclass(frozen=True)
class DatabaseState:
    recorded: dict[tuple[str, str], Recorded]
    """``(component, name) -> (sha256, how)`` from pgflow_python.installed (empty when absent)."""
    pgmq_extension_version: str | None
    pgmq_tables_present: bool
    pgmq_available_version: str | None
    realtime_send_present: bool
    pgflow_schema_present: bool
    pgflow_functions: frozenset[str]
    runtime_signatures: frozenset[str]

    @property
    def pgmq_mode(self) -> PgmqMode | None:
        if self.pgmq_extension_version is not None:
            registered = any(
                component == "pgmq" and item.how == "registered"
                for (component, _name), item in self.recorded.items()
            )
            return PgmqMode.REGISTERED if registered else PgmqMode.EXTENSION
        return PgmqMode.PLAIN if self.pgmq_tables_present else None

    @property
    def pgmq_recorded(self) -> bool:
        return any(component == "pgmq" for component, _ in self.recorded)

    def pending_extension(self) -> list[_sources.SqlFile]:
        pending = []
        for sql in _sources.extension_migrations():
            recorded = self.recorded.get(("extension", sql.name))
            if recorded is None:
                pending.append(sql)
            elif recorded.sha256 != sql.sha256:
                raise IncompatibleSchemaError(
                    f"extension/{sql.name} was applied with sha256 {recorded.sha256[:12]}… but the "
                    f"shipped file now has {sql.sha256[:12]}…: applied SQL must never change"
                )
        return pending

    def realtime_pending(self) -> bool:
        shim = _sources.own_sql("realtime_shim.sql")
        recorded = self.recorded.get(("realtime", shim.name))
        if recorded is None:
            return not self.realtime_send_present
        return recorded.sha256 != shim.sha256

    def nothing_to_do(self, upstream: UpstreamPlan) -> bool:
        return not (
            upstream.to_apply
            or upstream.to_adopt
            or self.pgmq_mode is None
            or not self.pgmq_recorded
            or self.realtime_pending()
            or self.pending_extension()
        )


def read_state(connection: Connection) -> DatabaseState:
    recorded: dict[tuple[str, str], Recorded] = {}
    if connection.execute(query("bookkeeping_present")).scalar_one():
        for row in connection.execute(query("installed_items")).mappings():
            recorded[(row["component"], row["name"])] = Recorded(row["sha256"], row["how"])
    pgmq = connection.execute(query("pgmq_state")).mappings().one()
    realtime = connection.execute(query("realtime_state")).mappings().one()
    return DatabaseState(
        recorded=recorded,
        pgmq_extension_version=pgmq["extension_version"],
        pgmq_tables_present=pgmq["tables_present"],
        pgmq_available_version=pgmq["available_version"],
        realtime_send_present=realtime["send_present"],
        pgflow_schema_present=connection.execute(query("pgflow_schema_present")).scalar_one(),
        pgflow_functions=frozenset(
            r["name"] for r in connection.execute(query("pgflow_functions")).mappings()
        ),
        runtime_signatures=frozenset(
            r["signature"] for r in connection.execute(query("runtime_signatures")).mappings()
        ),
    )


def classify_upstream(state: DatabaseState) -> UpstreamPlan:
    """Which upstream migrations to apply, or to adopt as already applied by other tooling."""
    migrations = _sources.upstream_migrations()
    recorded = {
        name: item.sha256
        for (component, name), item in state.recorded.items()
        if component == "upstream"
    }
    if recorded:
        pending = _check_recorded(migrations, recorded)
        if not pending:
            _check_unchanged_since_install(state)
        return UpstreamPlan(to_apply=tuple(pending))
    if not state.pgflow_schema_present:
        return UpstreamPlan(to_apply=tuple(migrations))
    to_adopt = _check_fingerprint(state.pgflow_functions)
    _check_unchanged_since_install(state, adopting=True)
    return UpstreamPlan(to_adopt=tuple(to_adopt))


def _check_recorded(
    migrations: list[_sources.SqlFile], recorded: dict[str, str]
) -> list[_sources.SqlFile]:
    shipped = {m.name for m in migrations}
    unknown = sorted(set(recorded) - shipped)
    if unknown:
        raise IncompatibleSchemaError(
            f"this database has upstream migrations this pgflow-python does not ship ({unknown[0]}"
            f"{' …' if len(unknown) > 1 else ''}): it was installed by a newer pgflow-python; "
            "upgrade pgflow-python"
        )
    pending = []
    for migration in migrations:
        sha = recorded.get(migration.name)
        if sha is None:
            pending.append(migration)
        elif sha != migration.sha256:
            raise IncompatibleSchemaError(
                f"upstream/{migration.name} was applied with sha256 {sha[:12]}… but the shipped "
                f"file has {migration.sha256[:12]}…: a changed file under an applied name is "
                "refused. Reinstall the pgflow-python release that applied it."
            )
        elif pending:
            raise IncompatibleSchemaError(
                f"upstream/{migration.name} is recorded but an earlier migration "
                f"({pending[0].name}) is not: the bookkeeping in pgflow_python.installed is damaged"
            )
    return pending


def _check_fingerprint(functions: frozenset[str]) -> list[_sources.SqlFile]:
    version = _sources.upstream_version()
    unknown = functions - UPSTREAM_081_FUNCTIONS - UPSTREAM_PRE_081_FUNCTIONS
    if unknown:
        raise IncompatibleSchemaError(
            f"schema pgflow was installed by other tooling and is newer than {version} "
            f"(functions {', '.join(sorted(unknown))} are not in {version}): "
            f"this pgflow-python supports @pgflow/core {version}; use a matching release"
        )
    missing = UPSTREAM_081_FUNCTIONS - functions
    if missing or functions & UPSTREAM_PRE_081_FUNCTIONS:
        raise IncompatibleSchemaError(
            f"schema pgflow was installed by other tooling and is older than {version}: "
            f"upgrade it to @pgflow/core {version} with the tooling that installed it "
            "(e.g. its Supabase migrations), then run `pgflow db install` to adopt it"
        )
    return _sources.upstream_migrations()


def _check_unchanged_since_install(state: DatabaseState, *, adopting: bool = False) -> None:
    """Refuse a schema whose run-time functions are not the ones this release calls.

    Catches upgrades made by other tooling after pgflow-python installed or adopted the schema
    (a TypeScript team applying a newer @pgflow/core's migrations), which bookkeeping cannot see.
    """
    version = _sources.upstream_version()
    added = sorted(state.pgflow_functions - UPSTREAM_081_FUNCTIONS)
    changed = sorted(UPSTREAM_081_SIGNATURES - state.runtime_signatures)
    if not added and not changed:
        return
    found = f"functions not in {version}: {', '.join(added)}" if added else ""
    if changed:
        found += ("; " if found else "") + f"changed or missing: {changed[0]}"
        found += f" (+{len(changed) - 1} more)" if len(changed) > 1 else ""
    when = "is not" if adopting else "is no longer"
    raise IncompatibleSchemaError(
        f"schema pgflow {when} @pgflow/core {version} ({found}). Another tool, such as a "
        "TypeScript pgflow deployment's migrations, changed it. This pgflow-python supports "
        f"@pgflow/core {version} only: keep both sides on {version} or use the pgflow-python "
        "release for the installed version (see docs/typescript-interop.md)"
    )
