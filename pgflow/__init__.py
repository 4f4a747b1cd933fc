"""pgflow for Python: Postgres-native workflows.

Flows are DAGs of steps orchestrated inside PostgreSQL by the pgflow SQL core on pgmq queues.
"""

from pgflow.client import (
    FlowInputError,
    FlowNotRegisteredError,
    InputNotJSONError,
    MapInputNotArrayError,
    NotAJobError,
    RunExistsError,
    RunFailedError,
    RunTimeoutError,
    UnknownRunError,
    enqueue,
    enqueue_async,
    get_run,
    get_run_async,
    get_run_with_states,
    get_run_with_states_async,
    start_flow,
    start_flow_and_wait,
    start_flow_and_wait_async,
    start_flow_async,
    wait_for_run,
    wait_for_run_async,
)
from pgflow.compiler import compile_flow
from pgflow.context import Context
from pgflow.definition import (
    FlowDefinition,
    FlowDefinitionError,
    FlowType,
    StepDefinition,
    StepType,
)
from pgflow.dsl import Flow, Job, definition_of, map_step, step
from pgflow.errors import (
    DatabaseUnavailableError,
    IncompatibleSchemaError,
    InsufficientPrivilegeError,
    PgflowError,
    SchemaError,
    SchemaFilesError,
)
from pgflow.results import (
    Run,
    RunStatus,
    RunWithStates,
    StepState,
    StepStatus,
    StepTask,
    TaskStatus,
)
from pgflow.schema import InstallReport, PgmqMode, SchemaStatus, install, status

__version__ = "0.1.0"

__all__ = [
    "Context",
    "DatabaseUnavailableError",
    "Flow",
    "FlowDefinition",
    "FlowDefinitionError",
    "FlowInputError",
    "FlowNotRegisteredError",
    "FlowType",
    "IncompatibleSchemaError",
    "InputNotJSONError",
    "InstallReport",
    "InsufficientPrivilegeError",
    "Job",
    "MapInputNotArrayError",
    "NotAJobError",
    "PgflowError",
    "PgmqMode",
    "Run",
    "RunExistsError",
    "RunFailedError",
    "RunStatus",
    "RunTimeoutError",
    "RunWithStates",
    "SchemaError",
    "SchemaFilesError",
    "SchemaStatus",
    "StepDefinition",
    "StepState",
    "StepStatus",
    "StepTask",
    "StepType",
    "TaskStatus",
    "UnknownRunError",
    "__version__",
    "compile_flow",
    "definition_of",
    "enqueue",
    "enqueue_async",
    "get_run",
    "get_run_async",
    "get_run_with_states",
    "get_run_with_states_async",
    "install",
    "map_step",
    "start_flow",
    "start_flow_and_wait",
    "start_flow_and_wait_async",
    "start_flow_async",
    "status",
    "step",
    "wait_for_run",
    "wait_for_run_async",
]
