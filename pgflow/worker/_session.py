"""A serving session: the state of one ``Worker.serve()`` call, made when it starts, dropped when
it returns. Services receive it; anything that exists only while serving lives here."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import anyio
from sqlalchemy.engine import Engine

from pgflow.definition import FlowDefinition, StepType
from pgflow.dsl import Flow, HandlerSpec, definition_of
from pgflow.worker._cancellation import RunCancellations
from pgflow.worker._options import WorkerOptions
from pgflow.worker._store import Registration, TaskKey, WorkerStore


@dataclass(frozen=True)
class ServedFlow:
    """A flow class the worker serves, under a ``pgflow.workers`` id of its own."""

    flow_class: type[Flow]
    definition: FlowDefinition
    handlers: dict[str, HandlerSpec]
    instance: Flow
    worker_id: uuid.UUID
    feeds_map: frozenset[str]
    """Single steps a map step depends on: they must return arrays."""

    @classmethod
    def of(cls, flow_class: type[Flow]) -> ServedFlow:
        definition = definition_of(flow_class)
        feeds_map = frozenset(
            dep
            for step in definition.steps
            if step.step_type is StepType.MAP
            for dep in step.depends_on
            if definition.step(dep).step_type is StepType.SINGLE
        )
        return cls(
            flow_class,
            definition,
            dict(flow_class.__pgflow_handlers__),
            flow_class(),
            uuid.uuid4(),
            feeds_map,
        )

    @property
    def slug(self) -> str:
        return self.definition.slug

    @property
    def registration(self) -> Registration:
        function_name = f"{self.flow_class.__module__}.{self.flow_class.__qualname__}"
        return Registration(self.worker_id, self.slug, function_name)


class ServingSession:
    """What a serving worker shares with its loops and background services.

    ``stopping`` is set once, by :meth:`stop`: claiming ends, in-flight handlers drain, then the
    services are cancelled. ``running`` holds the tasks this process is running right now (a
    claim adds them under ``claim_lock`` before anything else can look), so that no sweep of
    ours takes them away from the living.
    """

    def __init__(
        self,
        flows: Sequence[ServedFlow],
        store: WorkerStore,
        options: WorkerOptions,
        engine: Engine,
    ) -> None:
        self.flows = tuple(flows)
        self.store = store
        self.options = options
        self.engine = engine
        self.stopping = anyio.Event()
        self.slots = anyio.Semaphore(options.concurrency)
        self.handlers_scope = anyio.CancelScope()
        self.claim_lock = anyio.Lock()
        self.running: set[TaskKey] = set()
        self.cancellations = RunCancellations()
        """Running tasks by run, for the cancel watcher (pgflow/worker/_cancellation.py)."""
        self.uncertain_claims: set[uuid.UUID] = set()
        """Worker ids whose last claim broke off after it may have committed."""
        self.async_deadlines: dict[TaskKey, float] = {}
        """Running async handlers: when their timeout cancels them (``anyio.current_time()``)."""
        self.ending_since: float | None = None
        """Monotonic time of the stop or crash that ends this session."""
        self.crash_reason: str | None = None
        self.heartbeats_healthy_since: float | None = None
        """Monotonic time since which every heartbeat went through (None: the last failed)."""
        self.started_at = time.monotonic()
        self._wakeups: dict[str, anyio.Event] = {flow.slug: anyio.Event() for flow in flows}

    @property
    def flow_slugs(self) -> tuple[str, ...]:
        return tuple(flow.slug for flow in self.flows)

    @property
    def worker_ids(self) -> list[uuid.UUID]:
        return [flow.worker_id for flow in self.flows]

    def stop(self) -> None:
        """Stop claiming and let in-flight handlers finish (idempotent; event loop only)."""
        if self.ending_since is None:
            self.ending_since = time.monotonic()
        self.stopping.set()
        for flow in self.flows:
            self.wake(flow.slug)

    def crash(self, reason: str) -> None:
        """End serving as a crash (``worker.crashed``, non-zero exit): for a state the process
        cannot recover from by itself. Claiming stops and in-flight work drains as in a stop;
        then ``serve()`` raises. Event loop only."""
        if self.crash_reason is None:
            self.crash_reason = reason
        self.stop()

    def cancel_handlers(self) -> None:
        """Cancel in-flight handlers at once (a second signal)."""
        self.handlers_scope.cancel()

    def arm_wakeup(self, flow_slug: str) -> anyio.Event:
        """A fresh event that the next :meth:`wake` of the flow sets (arm before claiming, so
        a wake-up that arrives during the claim is not lost)."""
        event = self._wakeups[flow_slug] = anyio.Event()
        return event

    def wake(self, flow_slug: str) -> None:
        event = self._wakeups.get(flow_slug)
        if event is not None:
            event.set()

    def wake_worker(self, worker_id: uuid.UUID) -> None:
        for flow in self.flows:
            if flow.worker_id == worker_id:
                self.wake(flow.slug)
