"""Progress of a long ``pgflow prune`` on standard error: one line rewritten in place on a
terminal, plain lines (at most one every few seconds, and the last) when it is not one.

No progress library: click's progress bar needs the total, which would cost a counting pass
over the history before deleting any of it; batches, rows removed and the rate need none.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from pgflow.operations import PruneReport

LINE_EVERY = 5.0
"""Seconds between plain lines (not a terminal): enough for a log, not a line per batch."""


class PruneProgress:
    def __init__(self, stream: TextIO | None = None, *, every: float = LINE_EVERY) -> None:
        self._stream: TextIO = stream or sys.stderr
        self._live = self._stream.isatty()
        self._every = every
        self._last_line: float | None = None
        self._pending: PruneReport | None = None
        self._shown = False

    def __call__(self, report: PruneReport) -> None:
        """After each batch: the counts so far."""
        if self._live:
            self._write(f"\r{self.line(report)}\x1b[K")
            self._shown = True
            return
        now = time.monotonic()
        if self._last_line is None or now - self._last_line >= self._every:
            self._write(self.line(report) + "\n")
            self._last_line, self._pending = now, None
        else:
            self._pending = report

    def finish(self) -> None:
        """End the live line, or print the counts of the batches not printed yet."""
        if self._shown:
            self._write("\n")
        elif self._pending is not None:
            self._write(self.line(self._pending) + "\n")

    @staticmethod
    def line(report: PruneReport) -> str:
        rows = (
            report.runs
            + report.step_states
            + report.step_tasks
            + report.messages
            + report.extension_rows
        )
        rate = report.runs / report.seconds if report.seconds > 0 else 0.0
        return (
            f"pruning: batch {report.batches}, {report.runs} run(s) and {report.step_tasks} "
            f"task(s) removed ({rows} rows), {rate:.0f} runs/s, {report.seconds:.1f}s"
        )

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()
