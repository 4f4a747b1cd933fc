"""pgflow for Python: Postgres-native workflows.

Flows are DAGs of steps orchestrated inside PostgreSQL by the pgflow SQL core on pgmq queues.
"""

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
from pgflow.schema import InstallReport, PgmqMode, SchemaStatus, install, status

__version__ = "0.1.0"

__all__ = [
    "Context",
    "DatabaseUnavailableError",
    "Flow",
    "FlowDefinition",
    "FlowDefinitionError",
    "FlowType",
    "IncompatibleSchemaError",
    "InstallReport",
    "InsufficientPrivilegeError",
    "Job",
    "PgflowError",
    "PgmqMode",
    "SchemaError",
    "SchemaFilesError",
    "SchemaStatus",
    "StepDefinition",
    "StepType",
    "__version__",
    "compile_flow",
    "definition_of",
    "install",
    "map_step",
    "status",
    "step",
]
