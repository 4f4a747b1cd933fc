"""Flow control options (docs/flow-control.md): per-key concurrency and rate limits, priorities.

Plain, validated data; enforced by our SQL (extension/0080) on the flow's queue, so a limit
holds for every worker, Python or TypeScript, and for runs started from SQL.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
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
        return _key_path(self.key, "Concurrency")

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


def _key_path(key: str | Sequence[str] | None, what: str) -> tuple[str, ...]:
    if key is None:
        return ()
    parts = tuple(key.split(".")) if isinstance(key, str) else tuple(key)
    if not parts or any(not isinstance(p, str) or not _KEY_PART.match(p) for p in parts):
        raise FlowDefinitionError(
            f"{what} key must be a key name, a dotted path or a sequence of names "
            f"(letters, digits, '_', '-'; a digit part indexes an array), got {key!r}"
        )
    return parts


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_LONGEST_PERIOD = timedelta(days=366)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``limit`` task starts per ``per`` (a ``timedelta`` or seconds) with the same key
    value, across all workers; tasks over it wait, invisible, until the budget allows them.

    ``key`` as for :class:`Concurrency`. ``name`` (see :meth:`named`) shares one budget between
    every flow, job and step that uses a limit of that name; declare it once and reuse the
    object, since every use must give the same numbers.
    """

    limit: int
    per: timedelta | float
    """A ``timedelta`` once constructed (seconds are converted)."""
    key: str | Sequence[str] | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int):
            raise FlowDefinitionError(f"RateLimit limit must be a whole number, got {self.limit!r}")
        if not 1 <= self.limit <= _INT4_MAX:
            raise FlowDefinitionError(
                f"RateLimit limit must be at least 1 (at most {_INT4_MAX}) starts per period, "
                f"got {self.limit}"
            )
        per: object = self.per
        if isinstance(per, (int, float)) and not isinstance(per, bool):
            if not math.isfinite(per) or not 0 < per <= _LONGEST_PERIOD.total_seconds():
                raise FlowDefinitionError(
                    f"RateLimit per must be a positive period of at most 366 days, got {per!r}"
                )
            per = timedelta(seconds=per)
        if not isinstance(per, timedelta):
            raise FlowDefinitionError(
                f"RateLimit per must be a timedelta (or seconds), got {self.per!r}"
            )
        if not timedelta(0) < per <= _LONGEST_PERIOD:
            raise FlowDefinitionError(
                f"RateLimit per must be a positive period of at most 366 days, got {per}"
            )
        object.__setattr__(self, "per", per)
        object.__setattr__(self, "key", _key_path(self.key, "RateLimit") or None)
        if self.name is not None and (not isinstance(self.name, str) or not _NAME.match(self.name)):
            raise FlowDefinitionError(
                "RateLimit name must be 1-100 letters, digits, '_', '.' or '-' (not starting "
                f"with '.' or '-'), got {self.name!r}"
            )

    @classmethod
    def named(
        cls,
        name: str,
        limit: int,
        *,
        per: timedelta | float,
        key: str | Sequence[str] | None = None,
    ) -> RateLimit:
        """A limit whose budget is shared by every flow, job and step using ``name``."""
        return cls(limit, per, key, name)

    @property
    def key_path(self) -> tuple[str, ...]:
        """The key as path parts (empty: no key)."""
        return _key_path(self.key, "RateLimit")

    @property
    def seconds(self) -> float:
        """The period in seconds."""
        per = self.per
        return per.total_seconds() if isinstance(per, timedelta) else float(per)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"limit": self.limit, "per": self.seconds}
        if self.key_path:
            data["key"] = list(self.key_path)
        if self.name is not None:
            data["name"] = self.name
        return data

    @classmethod
    def from_dict(cls, data: Any) -> RateLimit:
        """From ``to_dict``'s form (as stored in Alembic revisions), or a ``RateLimit``."""
        if isinstance(data, RateLimit):
            return data
        if (
            not isinstance(data, dict)
            or set(data) - {"limit", "per", "key", "name"}
            or not {"limit", "per"} <= set(data)
        ):
            raise FlowDefinitionError(
                f"rate_limit must be RateLimit(limit, per=..., key=...), got {data!r}"
            )
        key = data.get("key")
        return cls(
            data["limit"],
            data["per"],
            tuple(key) if isinstance(key, list) else key,
            data.get("name"),
        )
