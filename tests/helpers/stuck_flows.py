"""Flows whose handlers never end on their own, for the worker-exit acceptance tests."""

from __future__ import annotations

import time
from typing import Any

import anyio

from pgflow import Context, Job


class StuckSync(Job, slug="stuck_sync", timeout=3, max_attempts=1):
    def perform(self, input: Any, ctx: Context) -> None:
        time.sleep(3600)  # Python cannot interrupt this thread


class IgnoresCancellation(Job, slug="ignores_cancellation", timeout=3, max_attempts=1):
    async def perform(self, input: Any, ctx: Context) -> None:
        while True:
            try:  # noqa: SIM105 - the mistake this test is about: swallowing cancellation
                await anyio.sleep(0.05)
            except BaseException:  # noqa: S110
                pass
