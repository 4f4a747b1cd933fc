"""Operating runs: cancel, retry, resume, prune, and reading runs and workers for operators.

Every call takes a ``Session``, ``Connection`` or ``Engine`` (the ``*_async`` twins: their async
counterparts), as the client's ``start_flow`` does. State lives in the database (schema
``pgflow_python``, keyed by run id); upstream's statuses stay upstream's: a cancelled run is
``failed`` and marked cancelled. See docs/operations.md.
"""

from pgflow.operations._control import (
    cancel_run,
    cancel_run_async,
    resume_run,
    resume_run_async,
    retry_run,
    retry_run_async,
)
from pgflow.operations._inspect import (
    LISTABLE_STATUSES,
    describe_run,
    describe_run_async,
    list_runs,
    list_runs_async,
    list_workers,
    list_workers_async,
    resolve_run_id,
)
from pgflow.operations._limits import LimitUse, list_limits, list_limits_async
from pgflow.operations._prune import DEFAULT_BATCH_SIZE, PRUNABLE_STATUSES, prune, prune_async
from pgflow.operations._results import (
    CancelOutcome,
    CancelResult,
    PruneReport,
    ResumeOutcome,
    ResumeRecord,
    ResumeResult,
    RetryOutcome,
    RetryResult,
    RunDetails,
    RunSummary,
    StepSummary,
    SubflowLink,
    WorkerInfo,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "LISTABLE_STATUSES",
    "PRUNABLE_STATUSES",
    "CancelOutcome",
    "CancelResult",
    "LimitUse",
    "PruneReport",
    "ResumeOutcome",
    "ResumeRecord",
    "ResumeResult",
    "RetryOutcome",
    "RetryResult",
    "RunDetails",
    "RunSummary",
    "StepSummary",
    "SubflowLink",
    "WorkerInfo",
    "cancel_run",
    "cancel_run_async",
    "describe_run",
    "describe_run_async",
    "list_limits",
    "list_limits_async",
    "list_runs",
    "list_runs_async",
    "list_workers",
    "list_workers_async",
    "prune",
    "prune_async",
    "resolve_run_id",
    "resume_run",
    "resume_run_async",
    "retry_run",
    "retry_run_async",
]
