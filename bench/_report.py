"""Collect figures over repetitions; render the table, the ratios and the goals."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench._machine import MAX_BACKGROUND_CORES, MAX_STEAL_PERCENT, Conditions

OURS, FLOOR, SET_FLOOR = "pgflow-python", "sql-floor", "sql-floor-set"
FLOORS = (FLOOR, SET_FLOOR)

# metric -> (label, unit, higher is better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "P1": ("P1 drain, 1 worker process", "jobs/s", True),
    "P2": ("P2 3-step flows", "flows/s", True),
    "P3_seconds": ("P3 map + fan-in, wall", "s", False),
    "P3_rate": ("P3 map + fan-in", "tasks/s", True),
    "P4_p50": ("P4 start-and-wait p50", "ms", False),
    "P4_p99": ("P4 start-and-wait p99", "ms", False),
    "P5": ("P5 worker CPU per job", "ms", False),
    "P6_rate": ("P6 drain with backlog", "jobs/s", True),
    "P6": ("P6 rate with backlog / P1", "ratio", True),
    "P7_before": ("P7 worker RSS before P6", "MiB", False),
    "P7_after": ("P7 worker RSS after P6", "MiB", False),
}


@dataclass
class Results:
    sizes: dict[str, int]
    repetitions: int
    values: dict[str, dict[str, list[float]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )
    settings: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    # One entry per measurement: system, workload and the machine's Conditions around it.
    conditions: list[dict[str, Any]] = field(default_factory=list)

    def record_conditions(self, system: str, workload: str, conditions: Conditions) -> None:
        self.conditions.append({"system": system, "workload": workload, **conditions.to_json()})

    def add(self, system: str, metric: str, value: float) -> None:
        self.values[system][metric].append(value)

    def derive(self) -> None:
        """P6 is the backlog drain rate over the P1 rate, from their medians."""
        for system, metrics in self.values.items():
            if metrics.get("P1") and metrics.get("P6_rate"):
                metrics["P6"] = [self.median(system, "P6_rate") / self.median(system, "P1")]

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Results:
        results = cls(sizes=data["sizes"], repetitions=data["repetitions"])
        for system, metrics in data["values"].items():
            for metric, values in metrics.items():
                results.values[system][metric].extend(values)
        results.settings.update(data["settings"])
        results.notes.update(data["notes"])
        results.conditions.extend(data.get("conditions", []))
        return results

    def to_json(self) -> dict[str, object]:
        return {
            "sizes": self.sizes,
            "repetitions": self.repetitions,
            "values": {system: dict(metrics) for system, metrics in self.values.items()},
            "settings": self.settings,
            "notes": self.notes,
            "conditions": self.conditions,
        }

    def skip(self, system: str, why: str) -> None:
        self.notes[system] = why

    def unsupported(self, system: str, workload: str, why: str) -> None:
        self.notes[f"{system} {workload}"] = f"n/a: {why}"

    def median(self, system: str, metric: str) -> float:
        return statistics.median(self.values[system][metric])

    def has(self, system: str, metric: str) -> bool:
        return bool(self.values.get(system, {}).get(metric))


def _cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    median, low = statistics.median(values), min(values)
    return f"{median:,.2f}" if len(values) == 1 else f"{median:,.2f} (min {low:,.2f})"


def render(results: Results) -> str:
    results.derive()
    systems = [s for s in (OURS, *FLOORS) if s in results.values] + sorted(
        s for s in results.values if s not in (OURS, *FLOORS)
    )
    header = ["metric", "unit", *systems]
    rows = [header, ["---"] * len(header)]
    for metric, (label, unit, _) in METRICS.items():
        if any(results.has(s, metric) for s in systems):
            rows.append([label, unit, *(_cell(results.values[s][metric]) for s in systems)])
    lines = [
        f"sizes {results.sizes}, {results.repetitions} repetition(s); cells: median (min)",
        "",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        "Ratios, pgflow-python / other, of medians (rates: above 1 is better; ms, s: below 1):",
    ]
    for metric, (label, _, _) in METRICS.items():
        if not results.has(OURS, metric) or metric.startswith("P7"):
            continue
        ours = results.median(OURS, metric)
        ratios = [
            f"{other} {ours / results.median(other, metric):.2f}x"
            for other in systems
            if other != OURS and results.has(other, metric) and results.median(other, metric)
        ]
        if ratios:
            lines.append(f"- {label}: " + ", ".join(ratios))
    lines += ["", "Machine:", *_machine(results)]
    lines += ["", "Goals:", *_goals(results), "", "Settings:"]
    lines += [f"- {system}: {text}" for system, text in results.settings.items()]
    lines += [f"- {key}: {text}" for key, text in results.notes.items()]
    return "\n".join(lines)


def _machine(results: Results) -> list[str]:
    """Whether the figures can be trusted: the load around each measurement."""
    measured = results.conditions
    if not measured:
        return ["- not sampled (no /proc): whether the machine was quiet is unknown"]
    busy = [c for c in measured if not c["reliable"]]
    loads = [c["load1"] for c in measured]
    lines = [
        f"- load average (1 min) at the measurements' starts: {min(loads):.2f} to"
        f" {max(loads):.2f}; background CPU up to"
        f" {max(c['background_cores'] for c in measured):.2f} cores;"
        f" steal up to {max(c['steal_percent'] for c in measured):.1f} %"
    ]
    if not busy:
        lines.append(f"- quiet: all {len(measured)} measurements (figures reliable)")
        return lines
    lines.append(
        f"- FIGURES UNRELIABLE: {len(busy)} of {len(measured)} measurements ran on a busy"
        f" machine (background CPU > {MAX_BACKGROUND_CORES} cores or steal >"
        f" {MAX_STEAL_PERCENT} %); re-run when the machine is quiet:"
    )
    lines += [
        f"  - {c['workload']} {c['system']}: background {c['background_cores']:.2f} cores,"
        f" steal {c['steal_percent']:.1f} %, load {c['load1']:.2f}"
        for c in busy
    ]
    return lines


def _goals(results: Results) -> list[str]:
    def ratio(metric: str, other: str) -> float | None:
        if results.has(OURS, metric) and results.has(other, metric):
            return results.median(OURS, metric) / results.median(other, metric)
        return None

    def absolute(metric: str) -> float | None:
        return results.median(OURS, metric) if results.has(OURS, metric) else None

    def above_set_floor(metric: str) -> float | None:
        if results.has(OURS, metric) and results.has(SET_FLOOR, metric):
            return results.median(OURS, metric) - results.median(SET_FLOOR, metric)
        return None

    def rss_growth() -> float | None:
        before, after = absolute("P7_before"), absolute("P7_after")
        return None if before is None or after is None else after / before

    goals: list[tuple[str, Callable[[], float | None], Callable[[float], bool]]] = [
        ("P1 ≥ 1.0x PgQueuer (long-term)", lambda: ratio("P1", "pgqueuer"), lambda v: v >= 1.0),
        ("P1 ≥ 0.3x PgQueuer", lambda: ratio("P1", "pgqueuer"), lambda v: v >= 0.3),
        # The worker on upstream's per-task complete_task drained at about 1.0x this floor.
        ("P1 ≥ 3x upstream per-task SQL floor", lambda: ratio("P1", FLOOR), lambda v: v >= 3),
        ("P1 ≥ 0.8x set-based SQL floor", lambda: ratio("P1", SET_FLOOR), lambda v: v >= 0.8),
        ("P2 ≥ 4x DBOS", lambda: ratio("P2", "dbos"), lambda v: v >= 4),
        ("P2 ≥ 1.0x PgQueuer", lambda: ratio("P2", "pgqueuer"), lambda v: v >= 1.0),
        ("P3 ≥ 5x DBOS", lambda: ratio("P3_rate", "dbos"), lambda v: v >= 5),
        ("P3 ≥ 1.0x PgQueuer", lambda: ratio("P3_rate", "pgqueuer"), lambda v: v >= 1.0),
        ("P4 p50 ≤ Procrastinate's", lambda: ratio("P4_p50", "procrastinate"), lambda v: v <= 1),
        ("P4 p50 ≤ set-based floor + 2 ms", lambda: above_set_floor("P4_p50"), lambda v: v <= 2),
        ("P4 p99 ≤ 12 ms", lambda: absolute("P4_p99"), lambda v: v <= 12),
        ("P5 ≤ 0.35 ms CPU per job", lambda: absolute("P5"), lambda v: v <= 0.35),
        ("P6 ≥ 0.9", lambda: absolute("P6"), lambda v: v >= 0.9),
        ("P7 flat (RSS after/before ≤ 1.1)", rss_growth, lambda v: v <= 1.1),
    ]
    lines = []
    for label, value, met in goals:
        figure = value()
        verdict = "not measured" if figure is None else ("met" if met(figure) else "NOT met")
        shown = "" if figure is None else f" ({figure:.2f})"
        lines.append(f"- {label}: {verdict}{shown}")
    return lines
