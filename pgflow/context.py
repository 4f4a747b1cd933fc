"""What a step handler gets besides its input."""

from __future__ import annotations

import uuid
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Context:
    """The task being run: which run, flow, step, map element and attempt."""

    run_id: uuid.UUID
    flow_slug: str
    step_slug: str
    task_index: int = 0
    """Position of the element for a map step; 0 for a single step."""
    attempt: int = 1
    """1 for the first try, 2 for the first retry, …"""
