"""Jobs with priorities and rate limits, served by worker subprocesses in the acceptance tests.
Each handler records its own start (wall clock, pid) in a file named by the input, so a test
checks the order and the rate without trusting our tables."""

from __future__ import annotations

import time
from typing import Any

from pgflow import Context, Job, RateLimit
from tests.helpers.limited_flows import record


class RankedJob(Job, slug="ranked_job"):
    def perform(self, input: dict[str, Any], ctx: Context) -> None:
        record(input["log"], event="start", at=time.time(), n=input["n"], kind=input["kind"])
        time.sleep(input["seconds"])


class PacedJob(Job, slug="paced_job", rate_limit=RateLimit(6, per=3, key="tenant")):
    def perform(self, input: dict[str, Any], ctx: Context) -> None:
        record(input["log"], event="start", at=time.time(), n=input["n"], kind=input["tenant"])
        time.sleep(0.1)
