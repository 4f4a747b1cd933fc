"""How a duration reads wherever the library shows one (the CLI's tables, the dashboard)."""

from __future__ import annotations

from datetime import timedelta


def short_duration(value: timedelta | float) -> str:
    """``850ms``, ``12.3s``, ``4.5m``, ``3.2h``, ``2.0d``: compact, for columns and labels."""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"
