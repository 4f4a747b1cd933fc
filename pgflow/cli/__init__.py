"""The ``pgflow`` command line: one module per command group, each registered here.

Exit codes: 0 ok; 1 refused or a problem (schema, flows, database error); 2 usage (bad options,
an unparsable database URL); 3 no database. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import click

from pgflow._logging import configure_logging
from pgflow.cli import dashboard, db, flows, limits, operations, schedules, worker
from pgflow.cli._common import OneLineUsageErrors, log_format_option, log_level_option

__all__ = ["main"]


@click.group(cls=OneLineUsageErrors)
@click.version_option(package_name="pgflow-python")
@log_format_option
@log_level_option
@click.pass_context
def main(context: click.Context, log_format: str | None, log_level: str | None) -> None:
    """pgflow for Python: Postgres-native workflows.

    Every command logs to standard error; `pgflow --log-format json <command>` sets the format.
    """
    settings = {"log_format": log_format or "console", "level": log_level or "info"}
    context.obj = settings
    configure_logging(settings["log_format"], settings["level"])


for _command in (
    db.db,
    flows.compile_command,
    worker.run_worker,
    dashboard.dashboard_command,
    schedules.schedules_group,
    operations.runs,
    operations.workers,
    operations.prune_command,
    limits.limits_command,
):
    main.add_command(_command)
