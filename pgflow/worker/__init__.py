"""The anyio worker: ``Worker([MyFlow], engine).run()`` or ``await worker.serve()``."""

from pgflow.errors import WorkerCrashedError
from pgflow.worker._options import WorkerOptions
from pgflow.worker._services import WorkerService
from pgflow.worker._session import ServingSession
from pgflow.worker._startup import FlowNotReadyError
from pgflow.worker._worker import Worker

__all__ = [
    "FlowNotReadyError",
    "ServingSession",
    "Worker",
    "WorkerCrashedError",
    "WorkerOptions",
    "WorkerService",
]
