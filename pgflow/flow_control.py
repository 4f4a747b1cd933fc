"""Flow control options (docs/flow-control.md): per-key concurrency limits, priorities.

Plain, validated data; enforced by our SQL (extension/0080) on the flow's queue, so a limit
holds for every worker, Python or TypeScript, and for runs started from SQL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pgflow.errors import FlowDefinitionError, InvalidPriorityError

_INT4_MAX = 2**31 - 1
_KEY_PART = re.compile(r"^[A-Za-z0-9_-]+$")


@dataclass(frozen=True, slots=True)
class Concurrency:
    """At most ``limit`` tasks of the flow with the same key value in flight at once.

    ``key`` names where the key value is in the run's input: a top-level key (``"tenant"``),
    a dotted path (``"customer.id"``) or a sequence of path parts; names are letters, digits,
    ``_`` and ``-``. No key: one limit for all runs. The value found there must be a string,
    number or boolean; ``start_flow`` refuses an input without it.
    """

    limit: int
    key: str | Sequence[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int):
            raise FlowDefinitionError(
                f"Concurrency limit must be a whole number, got {self.limit!r}"
            )
        if not 1 <= self.limit <= _INT4_MAX:
            raise FlowDefinitionError(
                f"Concurrency limit must be at least 1 (at most {_INT4_MAX}), got {self.limit}"
            )
        object.__setattr__(self, "key", self.key_path or None)

    @property
    def key_path(self) -> tuple[str, ...]:
        """The key as path parts (empty: no key)."""
        key = self.key
        if key is None:
            return ()
        parts = tuple(key.split(".")) if isinstance(key, str) else tuple(key)
        if not parts or any(not isinstance(p, str) or not _KEY_PART.match(p) for p in parts):
            raise FlowDefinitionError(
                "Concurrency key must be a key name, a dotted path or a sequence of names "
                f"(letters, digits, '_', '-'; a digit part indexes an array), got {key!r}"
            )
        return parts

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"limit": self.limit}
        if self.key_path:
            data["key"] = list(self.key_path)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> Concurrency:
        """From ``to_dict``'s form (as stored in Alembic revisions), or a ``Concurrency``."""
        if isinstance(data, Concurrency):
            return data
        if not isinstance(data, dict) or set(data) - {"limit", "key"} or "limit" not in data:
            raise FlowDefinitionError(
                f"concurrency must be Concurrency(limit, key=...), got {data!r}"
            )
        key = data.get("key")
        return cls(data["limit"], tuple(key) if isinstance(key, list) else key)


PRIORITY_RANGE = (-32767, 32767)
"""Priorities are whole numbers in this range; higher starts first, 0 is the default."""


def checked_priority(value: object, where: str) -> int:
    """``value`` as a priority, or ``InvalidPriorityError`` naming ``where``."""
    low, high = PRIORITY_RANGE
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidPriorityError(
            f"{where}: a priority must be a whole number from {low} to {high} (higher starts "
            f"first; 0 is the default), got {value!r}"
        )
    return value
