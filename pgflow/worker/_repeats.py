"""Warnings about a failure that repeats: an outage must not flood the logs.

A background activity that fails every round (the cancel check every 0.5 s, the scheduler every
second) logs its first failure, then at most once every ``REPEAT_EVERY`` seconds while the
failures go on, with ``failures``: how many in a row so far. A success starts over.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pgflow import telemetry

REPEAT_EVERY = 60.0
"""Seconds between two warnings about the same unbroken run of failures."""


class RepeatedFailure:
    """One activity's failures (used by one thread or task at a time)."""

    def __init__(self, event: str, *, level: int = logging.WARNING) -> None:
        self.event = event
        self.level = level
        self.failures = 0
        self._logged_at = 0.0

    def failed(self, **fields: Any) -> None:
        self.failures += 1
        now = time.monotonic()
        if self.failures == 1 or now - self._logged_at >= REPEAT_EVERY:
            self._logged_at = now
            telemetry.emit(self.event, level=self.level, failures=self.failures, **fields)

    def succeeded(self) -> None:
        self.failures = 0
