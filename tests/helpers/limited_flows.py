"""A job with a per-key concurrency limit, served by worker subprocesses in the acceptance
tests. Its handler records its own start and end (wall clock, pid) in a file named by the
input, so a test can check the limit without trusting our tables."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from pgflow import Concurrency, Context, Job


def record(path: str, **event: Any) -> None:
    # One short append per line: lines from several processes do not interleave.
    with open(path, "a") as log:
        log.write(json.dumps(event) + "\n")


class TenantSync(Job, slug="tenant_sync", concurrency=Concurrency(2, key="tenant")):
    def perform(self, input: dict[str, Any], ctx: Context) -> None:
        common = {"tenant": input["tenant"], "n": input["n"], "pid": os.getpid()}
        record(input["log"], event="start", at=time.time(), **common)
        time.sleep(input["seconds"])
        record(input["log"], event="end", at=time.time(), **common)
