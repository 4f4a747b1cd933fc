"""``pgflow limits``: every concurrency and rate limit with its live use per key value, as a
table and as JSON; an unknown --flow exits 1 naming it."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.engine import URL, Engine

from pgflow import Job, RateLimit
from pgflow.client import enqueue
from pgflow.operations import list_limits
from tests.acceptance.test_cli_runs import pgflow_cli
from tests.helpers.database import register_flows
from tests.helpers.limited_flows import TenantSync


class Paced(Job, slug="cli_paced", rate_limit=RateLimit(3, per=600, key="tenant")):
    def perform(self, input: dict[str, Any], ctx: Any) -> None:
        return None


def test_limits_show_in_flight_held_and_booked_starts(
    pgflow_engine: Engine, pgflow_database: URL
) -> None:
    register_flows(pgflow_engine, TenantSync, Paced)
    with pgflow_engine.begin() as connection:
        for n in range(5):
            enqueue(connection, TenantSync, {"tenant": "acme", "n": n})
        enqueue(connection, TenantSync, {"tenant": "globex", "n": 0})
        for n in range(4):
            enqueue(connection, Paced, {"tenant": "acme", "n": n})
    # Nothing read yet: the rate limit's starts are booked, none happened.
    uses = {
        (u.flow_slug, u.kind, u.key_value): (u.in_use, u.waiting)
        for u in list_limits(pgflow_engine)
    }
    assert uses == {
        ("tenant_sync", "concurrency", "acme"): (2, 3),
        ("tenant_sync", "concurrency", "globex"): (1, 0),
        ("cli_paced", "rate", "acme"): (0, 1),
    }

    shown = pgflow_cli(pgflow_database, "limits")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    cells = [line.split() for line in lines]
    assert lines[0].split() == ["FLOW", "KIND", "LIMIT", "KEY", "VALUE", "IN", "USE", "WAITING"]
    assert ["cli_paced", "rate", "3/600s", "tenant", '"acme"', "0/3", "1"] in cells
    assert ["tenant_sync", "concurrency", "2", "tenant", '"acme"', "2/2", "3"] in cells

    as_json = pgflow_cli(pgflow_database, "limits", "--flow", "tenant_sync", "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert {(u["key_value"], u["in_use"], u["waiting"]) for u in json.loads(as_json.stdout)} == {
        ("acme", 2, 3),
        ("globex", 1, 0),
    }

    unknown = pgflow_cli(pgflow_database, "limits", "--flow", "nope")
    assert unknown.returncode == 1
    assert "nope" in unknown.stderr


def test_runs_list_by_key(pgflow_engine: Engine, pgflow_database: URL) -> None:
    register_flows(pgflow_engine, TenantSync)
    acme = [enqueue(pgflow_engine, TenantSync, {"tenant": "acme", "n": n}) for n in range(2)]
    enqueue(pgflow_engine, TenantSync, {"tenant": "globex", "n": 0})
    enqueue(pgflow_engine, TenantSync, {"tenant": 7, "n": 0})

    listed = pgflow_cli(pgflow_database, "runs", "list", "--key", "tenant=acme", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {r["run_id"] for r in json.loads(listed.stdout)} == {str(r) for r in acme}
    numeric = pgflow_cli(pgflow_database, "runs", "list", "--key", "tenant=7", "--json")
    assert len(json.loads(numeric.stdout)) == 1  # 7 is the number; "7" would be the text
    bad = pgflow_cli(pgflow_database, "runs", "list", "--key", "tenant")
    assert bad.returncode == 2
    assert "PATH=VALUE" in bad.stderr
