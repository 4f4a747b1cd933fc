"""The anyio worker: ``Worker([MyFlow], engine).run()`` or ``await worker.serve()``."""

from pgflow.worker._options import WorkerOptions
from pgflow.worker._startup import FlowNotReadyError
from pgflow.worker._worker import Worker

__all__ = ["FlowNotReadyError", "Worker", "WorkerOptions"]
