"""``pgflow db status``: what is installed, in which mode, and what is pending."""

from __future__ import annotations

from dataclasses import dataclass

from pgflow._db import Bind, transaction
from pgflow._sql import query
from pgflow.errors import SchemaError
from pgflow.schema import _sources
from pgflow.schema._pgmq import PgmqMode
from pgflow.schema._state import classify_upstream, read_state


@dataclass(frozen=True)
class SchemaStatus:
    """A read-only snapshot of the pgflow schema in one database."""

    server_version: str
    database: str
    pgmq_mode: PgmqMode | None
    pgmq_version: str | None
    realtime: str
    """``shim`` (ours, NOTIFY), ``native`` (a realtime service such as Supabase) or ``missing``."""
    upstream_version: str | None
    """The upstream release once every shipped migration is applied or adopted."""
    upstream_applied: int
    upstream_total: int
    extension_applied: int
    extension_total: int
    pending: tuple[str, ...]
    problem: str | None
    """Why ``pgflow db install`` would refuse this database, if it would."""

    @property
    def up_to_date(self) -> bool:
        return not self.pending and self.problem is None

    def render(self) -> str:
        pgmq = (
            f"{self.pgmq_version or 'unknown version'} ({self.pgmq_mode})"
            if self.pgmq_mode
            else "not installed"
        )
        upstream = self.upstream_version or "not installed"
        lines = [
            f"database      {self.database} (PostgreSQL {self.server_version})",
            f"pgmq          {pgmq}",
            f"realtime      {self.realtime}",
            f"pgflow core   {upstream} "
            f"({self.upstream_applied}/{self.upstream_total} migrations recorded)",
            f"extension     {self.extension_applied}/{self.extension_total} files applied",
        ]
        if self.problem:
            lines.append(f"problem       {self.problem}")
        if self.pending:
            lines.append(f"pending       {len(self.pending)} items: run `pgflow db install`")
            lines += [f"  - {item}" for item in self.pending]
        else:
            lines.append("pending       nothing")
        return "\n".join(lines)


def status(bind: Bind) -> SchemaStatus:
    """Inspect ``bind``'s database without changing it."""
    with transaction(bind) as connection:
        facts = connection.execute(query("server_facts")).mappings().one()
        state = read_state(connection)
        problem = None
        pending: list[str] = []
        upstream_total = len(_sources.pins()["pgflow_core"]["migrations"])
        recorded_upstream = sum(1 for c, _ in state.recorded if c == "upstream")
        try:
            plan = classify_upstream(state)
            pending += [f"upstream/{m.name}" for m in plan.to_apply]
            pending += [f"upstream/{m.name} (adopt)" for m in plan.to_adopt]
            pending += [f"extension/{m.name}" for m in state.pending_extension()]
        except SchemaError as exc:
            problem = str(exc)
        if state.pgmq_mode is None:
            pending.insert(0, "pgmq")
        if state.realtime_pending():
            pending.insert(1 if state.pgmq_mode is None else 0, "realtime/realtime_shim.sql")
        pgmq_version = state.pgmq_extension_version or next(
            (
                name.removeprefix("pgmq--").removesuffix(".sql")
                for (component, name), item in state.recorded.items()
                if component == "pgmq" and item.how == "plain"
            ),
            None,
        )
        shim_recorded = any(c == "realtime" for c, _ in state.recorded)
        if shim_recorded:
            realtime = "shim (NOTIFY on channel pgflow)"
        elif state.realtime_send_present:
            realtime = "native (realtime.send provided by the server)"
        else:
            realtime = "missing"
        extension_total = len(_sources.extension_migrations())
        return SchemaStatus(
            server_version=facts["version"],
            database=facts["database"],
            pgmq_mode=state.pgmq_mode,
            pgmq_version=pgmq_version,
            realtime=realtime,
            upstream_version=(
                _sources.upstream_version() if recorded_upstream == upstream_total else None
            ),
            upstream_applied=recorded_upstream,
            upstream_total=upstream_total,
            extension_applied=sum(1 for c, _ in state.recorded if c == "extension"),
            extension_total=extension_total,
            pending=tuple(pending),
            problem=problem,
        )
