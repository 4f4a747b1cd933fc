"""Is the machine quiet enough for the figures to mean anything?

Before each measurement the harness samples the whole machine's CPU for a second while nothing of
the benchmark runs: whatever is busy then is someone else's load (other processes, other
sessions on a shared host). During the measurement it records the hypervisor's steal time. A
measurement taken with background load or steal above the thresholds is marked unreliable in the
report. Linux only (``/proc``); elsewhere nothing is sampled and the report says so.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PROC_STAT = Path("/proc/stat")
PROC_LOADAVG = Path("/proc/loadavg")
# Someone else's work using a quarter of a core, or 2 % of the time stolen by the hypervisor,
# moves a figure of this benchmark by more than its run-to-run spread on a quiet machine.
MAX_BACKGROUND_CORES = 0.25
MAX_STEAL_PERCENT = 2.0


@dataclass(frozen=True)
class CpuTimes:
    busy: int  # jiffies, all CPUs
    total: int
    steal: int

    @classmethod
    def now(cls) -> CpuTimes | None:
        try:
            fields = PROC_STAT.read_text().splitlines()[0].split()
        except OSError:
            return None
        # cpu user nice system idle iowait irq softirq steal guest guest_nice
        values = [int(v) for v in fields[1:9]]
        idle = values[3] + values[4]
        return cls(busy=sum(values) - idle, total=sum(values), steal=values[7])


@dataclass(frozen=True)
class Conditions:
    """The machine around one measurement."""

    load1: float  # 1-minute load average when the measurement started
    background_cores: float  # CPU busy in the second before, in cores
    steal_percent: float  # of all CPU time during the measurement

    @property
    def reliable(self) -> bool:
        return (
            self.background_cores <= MAX_BACKGROUND_CORES
            and self.steal_percent <= MAX_STEAL_PERCENT
        )

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "reliable": self.reliable}


class Probe:
    """``probe = Probe.before()``, run the measurement, then ``probe.after()``."""

    def __init__(self, load1: float, background: float, start: CpuTimes | None) -> None:
        self._load1 = load1
        self._background = background
        self._start = start

    @classmethod
    def before(cls, seconds: float = 1.0) -> Probe | None:
        first = CpuTimes.now()
        if first is None:
            return None
        time.sleep(seconds)
        second = CpuTimes.now()
        assert second is not None
        cpus = os.cpu_count() or 1
        elapsed = second.total - first.total
        background = cpus * (second.busy - first.busy) / elapsed if elapsed else 0.0
        load1 = float(PROC_LOADAVG.read_text().split()[0])
        return cls(load1, background, second)

    def after(self) -> Conditions:
        end = CpuTimes.now()
        steal = 0.0
        if end is not None and self._start is not None and end.total > self._start.total:
            steal = 100 * (end.steal - self._start.steal) / (end.total - self._start.total)
        return Conditions(self._load1, round(self._background, 2), round(steal, 2))
