"""Worker processes a test starts (``pgflow run-worker ...``), each logging to a file of its own,
killed at the end if still running."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
Spawn = Callable[..., subprocess.Popen[str]]


@contextmanager
def worker_processes(command: Sequence[str], logs: Path, env: Mapping[str, str]) -> Iterator[Spawn]:
    """``spawn(*args)`` starts ``command + args`` with ``env`` over this process's environment;
    its output goes to ``logs/worker-<n>.log`` (a file: an unread pipe would block the worker)."""
    processes: list[subprocess.Popen[str]] = []

    def spawn(*args: str) -> subprocess.Popen[str]:
        log_path = logs / f"worker-{len(processes)}.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [*command, *args],
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        processes.append(process)
        return process

    try:
        yield spawn
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)
