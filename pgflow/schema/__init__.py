"""Schema installer: pgmq, the realtime shim, upstream pgflow SQL and our extension SQL.

Used by ``pgflow db install|status|uninstall`` and by the Alembic revisions in ``alembic_pgflow``.
"""

from pgflow.schema._grants import Granted, grant_access
from pgflow.schema._installer import InstallReport, install
from pgflow.schema._pgmq import PgmqMode
from pgflow.schema._status import SchemaStatus, status
from pgflow.schema._uninstaller import uninstall

__all__ = [
    "Granted",
    "InstallReport",
    "PgmqMode",
    "SchemaStatus",
    "grant_access",
    "install",
    "status",
    "uninstall",
]
