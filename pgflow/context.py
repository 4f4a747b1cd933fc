"""What a step handler gets besides its input."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class Context:
    """The task being run: which run, flow, step, map element and attempt."""

    run_id: uuid.UUID
    flow_slug: str
    step_slug: str
    task_index: int = 0
    """Position of the element for a map step; 0 for a single step."""
    attempt: int = 1
    """1 for the first try, 2 for the first retry, …"""
    engine: Engine | None = field(default=None, repr=False)
    """The worker's SQLAlchemy engine, for handlers that need the database (a sync handler may
    use ``with ctx.engine.begin() as conn: ...``; an async one should do that in a thread)."""
    known_flow_input: Any = field(default=_UNSET, repr=False)
    load_flow_input: Callable[[], Awaitable[Any]] | None = field(default=None, repr=False)
    event_loop: Any = field(default=None, repr=False)
    """The worker's event loop token (``anyio.lowlevel.current_token()``), for sync handlers."""
    cancellation: threading.Event | None = field(default=None, repr=False)
    """Set by the worker when the run is cancelled while this task runs (see ``cancelled``)."""

    @property
    def cancelled(self) -> bool:
        """True once the run was cancelled (``pgflow.operations.cancel_run``) while this task
        runs. An async handler is cancelled at its next ``await`` and need not look; a sync
        handler cannot be interrupted, so a long one should check this now and then and return
        early. Whatever it returns after the cancel is ignored."""
        return self.cancellation is not None and self.cancellation.is_set()

    async def flow_input(self) -> Any:
        """The run's input. Dependent and map steps do not receive it, so it is loaded on demand
        (one query) unless the task already carried it."""
        if self.known_flow_input is not _UNSET:
            return self.known_flow_input
        if self.load_flow_input is None:
            raise LookupError("this context has no way to load the flow input")
        return await self.load_flow_input()

    def flow_input_sync(self) -> Any:
        """:meth:`flow_input` for sync handlers (they run in the worker's threads)."""
        if self.known_flow_input is not _UNSET:
            return self.known_flow_input
        import anyio.from_thread  # noqa: PLC0415 - only meaningful inside a worker thread

        return anyio.from_thread.run(self.flow_input, token=self.event_loop)
