"""The deadline sweep: wait timeouts and run deadlines (docs/waiting.md).

Both are times stored in the database (extension/0070-0071); something has to notice that they
passed. Every worker offers, every ``deadline_check_interval`` seconds, to run the sweep; one
caller at a time does the work (an advisory lock), the others return at once. A passed deadline
is therefore acted on within about that interval while any worker serves (the sweep covers every
flow), and at the first sweep after workers come back otherwise. Nothing else here reads or holds
anything: a waiting run costs a worker nothing until its timeout falls due.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import anyio

from pgflow import telemetry
from pgflow.worker._repeats import RepeatedFailure
from pgflow.worker._session import ServingSession

ROW_LIMIT = 500
"""Deadlines dealt with per transaction; the sweep goes on at once while it finds more."""


def _waited(since: datetime | None, waited_ms: float | None) -> dict[str, Any]:
    if since is None or waited_ms is None:
        return {}
    return {"waiting_since": since.isoformat(), "waited_ms": round(waited_ms, 1)}


class DeadlineSweep:
    """Offers every ``deadline_check_interval`` to enforce the deadlines that passed."""

    async def run(self, session: ServingSession) -> None:
        failures = RepeatedFailure("runs.deadline_sweep_failed")
        while True:
            await anyio.sleep(session.options.deadline_check_interval)
            try:
                while True:
                    actions = await session.store.enforce_deadlines(ROW_LIMIT)
                    if actions:
                        telemetry.emit(
                            "runs.deadlines_enforced",
                            level=logging.WARNING,
                            actions=[
                                {
                                    "kind": a.kind,
                                    "run_id": str(a.run_id),
                                    "step_slug": a.step_slug,
                                    "action": a.action,
                                }
                                for a in actions
                            ],
                        )
                    for a in actions:
                        if a.kind == "wait_timeout" and a.step_slug is not None:
                            telemetry.emit(
                                "wait.ended",
                                run_id=str(a.run_id),
                                step=a.step_slug,
                                outcome="abandoned" if a.action == "abandoned" else "timed_out",
                                action=a.action,
                                **_waited(a.waiting_since, a.waited_ms),
                            )
                    if len(actions) < ROW_LIMIT:
                        break
            except Exception as exc:  # the next round tries again; a deadline only comes late
                failures.failed(error=str(exc))
            else:
                failures.succeeded()
