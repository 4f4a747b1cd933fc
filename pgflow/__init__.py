"""pgflow for Python: Postgres-native workflows.

Flows are DAGs of steps orchestrated inside PostgreSQL by the pgflow SQL core on pgmq queues.
"""

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
    "DatabaseUnavailableError",
    "IncompatibleSchemaError",
    "InstallReport",
    "InsufficientPrivilegeError",
    "PgflowError",
    "PgmqMode",
    "SchemaError",
    "SchemaFilesError",
    "SchemaStatus",
    "__version__",
    "install",
    "status",
]
