"""``pgflow limits``: every concurrency and rate limit with its live use per key value."""

from __future__ import annotations

import json
from collections.abc import Sequence

import click

from pgflow.cli._common import (
    database_url_option,
    engine_for,
    finish,
    json_option,
    read_url_option,
    reports_errors,
    require_flows,
)
from pgflow.cli._render import table
from pgflow.operations import LimitUse, list_limits


def limits_table(limits: Sequence[LimitUse]) -> str:
    if not limits:
        return "No concurrency or rate limits."
    rows = []
    for use in limits:
        limit = f"{use.limit}" if use.per_seconds is None else f"{use.limit}/{use.per_seconds:g}s"
        rows.append(
            [
                use.flow_slug + (f".{use.step_slug}" if use.step_slug else ""),
                use.kind + (f" ({use.budget})" if use.budget else ""),
                limit,
                use.key or "-",
                json.dumps(use.key_value) if use.used and use.key else "-",
                f"{use.in_use}/{use.limit}",
                str(use.waiting),
            ]
        )
    headers = ["FLOW", "KIND", "LIMIT", "KEY", "VALUE", "IN USE", "WAITING"]
    return table(headers, rows)


@click.command("limits")
@database_url_option
@read_url_option
@click.option("--flow", help="Only the limits of this flow (slug).")
@json_option
@reports_errors
def limits_command(
    *, database_url: str | None, read_url: str | None, flow: str | None, as_json: bool
) -> None:
    """Concurrency and rate limits with their live use per key value.

    IN USE is tasks in flight (concurrency) or starts within the last period (rate), out of the
    limit; WAITING is tasks held for a slot, or booked for later by the rate budget.
    """
    with engine_for(read_url or database_url) as engine:
        found = list_limits(engine, flow=flow)
        if not found:
            require_flows(engine, flow)
    finish(as_json, found, limits_table(found))
