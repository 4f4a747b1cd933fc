"""Starting flows and jobs from an application, reading runs, waiting for them.

SQLAlchemy Core over upstream pgflow's functions. Every call takes a ``Session``, ``Connection``
or ``Engine`` (the ``*_async`` twins: ``AsyncSession``, ``AsyncConnection``, ``AsyncEngine``).
With a Session or Connection, starting a run happens in the caller's transaction: the run
exists only if the caller commits. See docs/starting-flows.md.
"""

from typing import Any

from pgflow._binds import AsyncBind, FlowRef, SyncBind
from pgflow._deprecated import moved_attribute
from pgflow.client._read import (
    get_run,
    get_run_async,
    get_run_with_states,
    get_run_with_states_async,
    get_task_failures,
    get_task_failures_async,
)
from pgflow.client._signal import signal, signal_async
from pgflow.client._start import enqueue, enqueue_async, start_flow, start_flow_async
from pgflow.client._wait import (
    start_flow_and_wait,
    start_flow_and_wait_async,
    wait_for_run,
    wait_for_run_async,
)

__all__ = [
    "AsyncBind",
    "FlowRef",
    "SyncBind",
    "enqueue",
    "enqueue_async",
    "get_run",
    "get_run_async",
    "get_run_with_states",
    "get_run_with_states_async",
    "get_task_failures",
    "get_task_failures_async",
    "signal",
    "signal_async",
    "start_flow",
    "start_flow_and_wait",
    "start_flow_and_wait_async",
    "start_flow_async",
    "wait_for_run",
    "wait_for_run_async",
]

# The errors this module exported before 0.2 are in pgflow.errors.
_MOVED = dict.fromkeys(
    [
        "FlowInputError",
        "FlowNotRegisteredError",
        "InputNotJSONError",
        "MapInputNotArrayError",
        "NotAJobError",
        "RunCancelledError",
        "RunExistsError",
        "RunFailedError",
        "RunTimeoutError",
        "UnknownRunError",
    ],
    "pgflow.errors",
)


def __getattr__(name: str) -> Any:
    return moved_attribute(__name__, _MOVED, name)
