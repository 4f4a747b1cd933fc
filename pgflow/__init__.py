"""pgflow for Python: Postgres-native workflows.

Flows are DAGs of steps orchestrated inside PostgreSQL by the pgflow SQL core on pgmq queues.
This module holds the entry points: the DSL, the client calls, the worker, the results and the
base error. Everything else is imported from its module (``pgflow.errors``, ``pgflow.schema``,
``pgflow.definition``, ``pgflow.compiler``, ``pgflow.testing``, ...).

Defining a flow imports no database code: the client calls and ``Worker`` are imported on first
use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pgflow._deprecated import moved_attribute
from pgflow.context import Context
from pgflow.dsl import Flow, Job, map_step, step, wait_step
from pgflow.dsl_subflow import subflow
from pgflow.errors import NonRetryableError, PgflowError
from pgflow.flow_control import Concurrency, RateLimit
from pgflow.results import (
    Run,
    RunStatus,
    RunWithStates,
    SignalOutcome,
    SignalResult,
    StepState,
    StepStatus,
    StepTask,
    TaskStatus,
)

if TYPE_CHECKING:
    from pgflow.client import (
        enqueue,
        enqueue_async,
        get_run,
        get_run_async,
        get_run_with_states,
        get_run_with_states_async,
        signal,
        signal_async,
        start_flow,
        start_flow_and_wait,
        start_flow_and_wait_async,
        start_flow_async,
        wait_for_run,
        wait_for_run_async,
    )
    from pgflow.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "Concurrency",
    "Context",
    "Flow",
    "Job",
    "NonRetryableError",
    "PgflowError",
    "RateLimit",
    "Run",
    "RunStatus",
    "RunWithStates",
    "SignalOutcome",
    "SignalResult",
    "StepState",
    "StepStatus",
    "StepTask",
    "TaskStatus",
    "Worker",
    "__version__",
    "enqueue",
    "enqueue_async",
    "get_run",
    "get_run_async",
    "get_run_with_states",
    "get_run_with_states_async",
    "map_step",
    "signal",
    "signal_async",
    "start_flow",
    "start_flow_and_wait",
    "start_flow_and_wait_async",
    "start_flow_async",
    "step",
    "subflow",
    "wait_for_run",
    "wait_for_run_async",
    "wait_step",
]

# The entry points not imported above need the database stack: imported on first use.
_LAZY = {
    name: "pgflow.worker" if name == "Worker" else "pgflow.client"
    for name in __all__
    if name not in globals()
}

# Names this module exported before 0.2, and where they live now.
_MOVED = {
    "compile_flow": "pgflow.compiler",
    "definition_of": "pgflow.dsl",
    **dict.fromkeys(
        ["FlowDefinition", "FlowType", "StepDefinition", "StepType"], "pgflow.definition"
    ),
    **dict.fromkeys(
        ["InstallReport", "PgmqMode", "SchemaStatus", "install", "status"], "pgflow.schema"
    ),
    **dict.fromkeys(
        [
            "DatabaseUnavailableError",
            "FlowDefinitionError",
            "FlowInputError",
            "FlowNotRegisteredError",
            "IncompatibleSchemaError",
            "InputNotJSONError",
            "InsufficientPrivilegeError",
            "MapInputNotArrayError",
            "NotAJobError",
            "RunExistsError",
            "RunFailedError",
            "RunTimeoutError",
            "SchemaError",
            "SchemaFilesError",
            "UnknownRunError",
        ],
        "pgflow.errors",
    ),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    return moved_attribute(__name__, _MOVED, name)
