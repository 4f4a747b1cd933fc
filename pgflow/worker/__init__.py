"""The anyio worker: ``Worker([MyFlow], engine).run()`` or ``await worker.serve()``."""

from typing import Any

from pgflow._deprecated import moved_attribute
from pgflow.worker._options import WorkerOptions
from pgflow.worker._services import ServiceContext, WorkerService
from pgflow.worker._worker import Worker

__all__ = ["ServiceContext", "Worker", "WorkerOptions", "WorkerService"]

# The errors this module exported before 0.2 are in pgflow.errors.
_MOVED = dict.fromkeys(["FlowNotReadyError", "WorkerCrashedError"], "pgflow.errors")


def __getattr__(name: str) -> Any:
    return moved_attribute(__name__, _MOVED, name)
