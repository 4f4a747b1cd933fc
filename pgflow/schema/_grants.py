"""Least-privilege grants for the roles that use pgflow (``pgflow db grant``).

The rules live in SQL (extension/0009_access_grants.sql), where the worker's start-up check
reads them too, so what is granted and what is checked cannot drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgflow._db import Bind, transaction
from pgflow._sql import query
from pgflow.errors import SchemaError
from pgflow.schema._status import status

ACCESS_KINDS = ("worker", "client", "operator", "readonly")


@dataclass(frozen=True)
class Granted:
    grantee: str
    access: str
    privileges: int
    """Object privileges granted now (default privileges for later objects come on top)."""
    creator: str
    """The role whose later objects (a new flow's queue tables) the grant covers."""

    def render(self) -> str:
        return (
            f"{self.access:<8} {self.grantee}: {self.privileges} object privileges, and the "
            f"same on tables and sequences {self.creator} creates later (new flows)"
        )


def grant_access(bind: Bind, grants: list[tuple[str, str]]) -> list[Granted]:
    """Grant each ``(role, access)`` (access: one of :data:`ACCESS_KINDS`) in one transaction.

    Run it as the role that applies migrations: default privileges cover what *that* role
    creates later, such as the queue tables of flows added after the grant.
    """
    for _, access in grants:
        if access not in ACCESS_KINDS:
            raise ValueError(f"unknown access {access!r}: use one of {', '.join(ACCESS_KINDS)}")
    report = status(bind)
    if report.problem is not None or report.pending:
        raise SchemaError(
            "the pgflow schema is not installed or not up to date: run `pgflow db install` "
            "before granting access"
        )
    done = []
    with transaction(bind) as connection:
        creator = str(connection.execute(query("server_facts")).mappings().one()["role"])
        for grantee, access in grants:
            count = connection.execute(
                query("grant_access"), {"grantee": grantee, "access": access}
            ).scalar_one()
            done.append(Granted(grantee, access, int(count), creator))
    return done
