"""Class-based flow definitions::

    class AnalyzeWebsite(Flow, slug="analyze_website", max_attempts=3):
        @step
        def website(self, input: dict, ctx: Context) -> dict: ...

        @step(depends_on=[website])
        def summary(self, deps: dict, ctx: Context) -> str: ...

Each concrete subclass is validated when the class is created and carries an immutable
:class:`~pgflow.definition.FlowDefinition` (see :func:`definition_of`).
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, ClassVar, Literal, Unpack, overload

from pgflow.cron import Cron, bind_declared
from pgflow.definition import (
    FLOW_OPTIONS,
    STEP_OPTIONS,
    FlowDefinition,
    FlowOptions,
    FlowType,
    OnTimeout,
    StepDefinition,
    StepOptions,
    StepType,
    WaitKind,
    options_given,
)
from pgflow.errors import FlowDefinitionError
from pgflow.flow_control import Concurrency, RateLimit

HandlerFunction = Callable[..., Any]
WhenUnmetName = Literal["fail", "skip", "skip-cascade"]
OnTimeoutName = Literal["fail", "skip"]

JOB_STEP_SLUG = "perform"


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """Where the worker finds a step's handler on a flow instance, and how to call it."""

    attribute: str
    takes_context: bool
    is_async: bool


class StepMethod:
    """A step declared with :func:`step` or :func:`map_step`; still callable as a method."""

    def __init__(
        self,
        function: HandlerFunction,
        *,
        step_type: StepType,
        depends_on: Sequence[StepMethod | str],
        slug: str | None,
        options: dict[str, int | None],
        condition: dict[str, Any],
    ) -> None:
        self.function = function
        self.condition = condition
        self.step_type = step_type
        self.depends_on = tuple(depends_on)
        self.explicit_slug = slug
        self.slug = slug or function.__name__
        self.options = options
        # Step-level limits (docs/flow-control.md): concurrency, rate_limit when given.
        self.flow_control: dict[str, Any] = {}
        self.attribute = function.__name__
        self.__doc__ = function.__doc__
        self.__wrapped__ = function

    def __set_name__(self, owner: type, name: str) -> None:
        self.attribute = name
        self.slug = self.explicit_slug or name

    @overload
    def __get__(self, instance: None, owner: type) -> StepMethod: ...
    @overload
    def __get__(self, instance: object, owner: type) -> Callable[..., Any]: ...
    def __get__(self, instance: object | None, owner: type) -> StepMethod | Callable[..., Any]:
        if instance is None:
            return self
        bound: Callable[..., Any] = self.function.__get__(instance, owner)
        return bound

    def __repr__(self) -> str:
        return f"<{self.step_type} step {self.slug!r}>"

    @property
    def has_handler(self) -> bool:
        """False for steps that run no handler (wait steps)."""
        return True

    def definition(self) -> StepDefinition:
        given: dict[str, Any] = {**self.options, **self.condition, **self.flow_control}
        return StepDefinition(
            slug=self.slug,
            step_type=self.step_type,
            depends_on=tuple(d.slug if isinstance(d, StepMethod) else d for d in self.depends_on),
            **given,
        )


class WaitStepMethod(StepMethod):
    """A step declared with :func:`wait_step`: no handler runs; it waits for a signal."""

    def __init__(
        self,
        function: HandlerFunction,
        *,
        depends_on: Sequence[StepMethod | str],
        slug: str | None,
        timeout: int | None,
        on_timeout: OnTimeout,
    ) -> None:
        super().__init__(
            function,
            step_type=StepType.SINGLE,
            depends_on=depends_on,
            slug=slug,
            options={},
            condition=_condition(None, None, None, None),
        )
        self.wait_timeout = timeout
        self.on_timeout = on_timeout

    def __repr__(self) -> str:
        return f"<wait step {self.slug!r}>"

    @property
    def has_handler(self) -> bool:
        return False

    def definition(self) -> StepDefinition:
        return replace(
            super().definition(),
            wait=WaitKind.SIGNAL,
            wait_timeout=self.wait_timeout,
            on_timeout=self.on_timeout,
        )


def _declarer(
    step_type: StepType,
    depends_on: Sequence[StepMethod | str],
    slug: str | None,
    options: dict[str, int | None],
    condition: dict[str, Any],
    *,
    flow_control: dict[str, Any] | None = None,
) -> Callable[[HandlerFunction], StepMethod]:
    def decorate(function: HandlerFunction) -> StepMethod:
        method = StepMethod(
            function,
            step_type=step_type,
            depends_on=depends_on,
            slug=slug,
            options=options,
            condition=condition,
        )
        method.flow_control = {k: v for k, v in (flow_control or {}).items() if v is not None}
        return method

    return decorate


@overload
def step(function: HandlerFunction, /) -> StepMethod: ...
@overload
def step(
    *,
    depends_on: Sequence[StepMethod | str] = (),
    slug: str | None = None,
    if_: Any = None,
    if_not: Any = None,
    when_unmet: WhenUnmetName | None = None,
    retries_exhausted: WhenUnmetName | None = None,
    concurrency: Concurrency | None = None,
    rate_limit: RateLimit | None = None,
    **options: Unpack[StepOptions],
) -> Callable[[HandlerFunction], StepMethod]: ...
def step(
    function: HandlerFunction | None = None,
    /,
    *,
    depends_on: Sequence[StepMethod | str] = (),
    slug: str | None = None,
    if_: Any = None,
    if_not: Any = None,
    when_unmet: WhenUnmetName | None = None,
    retries_exhausted: WhenUnmetName | None = None,
    concurrency: Concurrency | None = None,
    rate_limit: RateLimit | None = None,
    **options: Unpack[StepOptions],
) -> StepMethod | Callable[[HandlerFunction], StepMethod]:
    """Declare a step. A root step gets the flow input; a dependent step gets
    ``{dependency_slug: output, ...}``. Options left out use the flow's (then upstream's) values.

    Conditions (docs/defining-flows.md): the step runs only when its input contains ``if_``
    and does not contain ``if_not`` (JSON containment, PostgreSQL's ``@>``); otherwise
    ``when_unmet`` decides: ``"skip"`` (default), ``"skip-cascade"`` or ``"fail"``.
    ``retries_exhausted`` decides the same when the step runs out of attempts (default
    ``"fail"``).

    ``concurrency`` and ``rate_limit`` limit this step's tasks alone (docs/flow-control.md).
    """
    if isinstance(depends_on, (str, StepMethod)):
        depends_on = [depends_on]
    decorate = _declarer(
        StepType.SINGLE,
        depends_on,
        slug,
        options_given(options, STEP_OPTIONS, "step()"),
        _condition(if_, if_not, when_unmet, retries_exhausted),
        flow_control={"concurrency": concurrency, "rate_limit": rate_limit},
    )
    return decorate(function) if function is not None else decorate


@overload
def map_step(function: HandlerFunction, /) -> StepMethod: ...
@overload
def map_step(
    *,
    array: StepMethod | str | None = None,
    slug: str | None = None,
    if_: Any = None,
    if_not: Any = None,
    when_unmet: WhenUnmetName | None = None,
    retries_exhausted: WhenUnmetName | None = None,
    concurrency: Concurrency | None = None,
    rate_limit: RateLimit | None = None,
    **options: Unpack[StepOptions],
) -> Callable[[HandlerFunction], StepMethod]: ...
def map_step(
    function: HandlerFunction | None = None,
    /,
    *,
    array: StepMethod | str | None = None,
    slug: str | None = None,
    if_: Any = None,
    if_not: Any = None,
    when_unmet: WhenUnmetName | None = None,
    retries_exhausted: WhenUnmetName | None = None,
    concurrency: Concurrency | None = None,
    rate_limit: RateLimit | None = None,
    **options: Unpack[StepOptions],
) -> StepMethod | Callable[[HandlerFunction], StepMethod]:
    """Declare a map step: one task per element of an array, outputs collected in order.

    Without ``array`` it maps over the flow input (which must then be a JSON array); with
    ``array=other_step`` over that step's output (which must be an array). A condition
    (``if_`` ... as for :func:`step`) applies to the step as a whole: its pattern is matched
    against the flow input, or ``{array_step: array}``.
    """

    depends_on = [array] if array is not None else []
    decorate = _declarer(
        StepType.MAP,
        depends_on,
        slug,
        options_given(options, STEP_OPTIONS, "map_step()"),
        _condition(if_, if_not, when_unmet, retries_exhausted),
        flow_control={"concurrency": concurrency, "rate_limit": rate_limit},
    )
    return decorate(function) if function is not None else decorate


def _condition(
    if_: Any, if_not: Any, when_unmet: str | None, retries_exhausted: str | None
) -> dict[str, Any]:
    return {
        "if_": if_,
        "if_not": if_not,
        "when_unmet": when_unmet,
        "retries_exhausted": retries_exhausted,
    }


@overload
def wait_step(function: HandlerFunction, /) -> StepMethod: ...
@overload
def wait_step(
    *,
    depends_on: Sequence[StepMethod | str] = (),
    slug: str | None = None,
    timeout: timedelta | float | None = None,
    on_timeout: OnTimeoutName = "fail",
) -> Callable[[HandlerFunction], StepMethod]: ...
def wait_step(
    function: HandlerFunction | None = None,
    /,
    *,
    depends_on: Sequence[StepMethod | str] = (),
    slug: str | None = None,
    timeout: timedelta | float | None = None,
    on_timeout: OnTimeoutName = "fail",
) -> StepMethod | Callable[[HandlerFunction], StepMethod]:
    """Declare a step that runs no handler: when it becomes ready it waits, in the database,
    until ``pgflow.signal(bind, run_id, slug, output)`` completes it with ``output``
    (docs/waiting.md). The decorated method is never called; its docstring says what the step
    waits for::

        @wait_step(depends_on=[draft], timeout=timedelta(days=3), on_timeout="skip")
        def approval(self) -> None: ...  # a person approves the draft

    ``timeout`` (a ``timedelta`` or seconds, rounded up to whole seconds; default: none): when
    it passes with no signal, ``on_timeout`` applies: ``"fail"`` fails the step and the run,
    ``"skip"`` skips the step (its dependents run without its key). Waiting holds no worker.
    """
    if isinstance(depends_on, (str, StepMethod)):
        depends_on = [depends_on]
    seconds = _whole_seconds(timeout, "wait_step(timeout=...)")
    try:
        policy = OnTimeout(on_timeout)
    except ValueError:
        raise FlowDefinitionError(
            f"wait_step(on_timeout=...) must be 'fail' or 'skip', got {on_timeout!r}"
        ) from None

    def decorate(method: HandlerFunction) -> StepMethod:
        return WaitStepMethod(
            method, depends_on=depends_on, slug=slug, timeout=seconds, on_timeout=policy
        )

    return decorate(function) if function is not None else decorate


def _whole_seconds(value: timedelta | float | None, where: str) -> int | None:
    """A duration as whole seconds (rounded up: a deadline must not come early), > 0."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, timedelta | int | float):
        raise FlowDefinitionError(f"{where} must be a timedelta or seconds, got {value!r}")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds > 0 or math.isinf(seconds):
        raise FlowDefinitionError(f"{where} must be a positive duration, got {value!r}")
    return math.ceil(seconds)


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name).lower()


def _handler_spec(owner: type, attribute: str, function: HandlerFunction) -> HandlerSpec:
    parameters = [
        p
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(parameters) not in (2, 3):
        raise FlowDefinitionError(
            f"{owner.__qualname__}.{attribute} must take (self, input) or (self, input, ctx); "
            f"it takes {len(parameters)} positional parameters"
        )
    return HandlerSpec(
        attribute=attribute,
        takes_context=len(parameters) == 3,
        is_async=inspect.iscoroutinefunction(function),
    )


class Flow:
    """Base class of flow definitions; see the module docstring.

    Class keywords: ``slug`` (default: the class name in snake_case), ``max_attempts``,
    ``base_delay`` (seconds), ``timeout`` (seconds), ``schedule`` (a ``Cron(...)`` or a list
    of them; see docs/schedules.md), ``run_timeout`` (a ``timedelta`` or seconds: a run still
    going that long after it started is cancelled; docs/waiting.md), ``concurrency`` (a
    ``Concurrency(limit, key=...)``: at most ``limit`` of the flow's tasks with the same key
    value in flight at once, across all workers; docs/flow-control.md), ``priority`` (the
    default priority of its runs, -32767..32767: higher starts first), ``rate_limit`` (a
    ``RateLimit(limit, per=..., key=...)``: at most ``limit`` task starts per period with the
    same key value), ``abstract=True`` for a
    base class whose steps are inherited but which is not itself a flow.
    """

    __pgflow_definition__: ClassVar[FlowDefinition]
    __pgflow_handlers__: ClassVar[dict[str, HandlerSpec]]
    __pgflow_schedules__: ClassVar[tuple[Cron, ...]]
    __pgflow_subflows__: ClassVar[dict[str, HandlerSpec]]

    def __init_subclass__(
        cls,
        *,
        slug: str | None = None,
        schedule: Cron | Sequence[Cron] | None = None,
        abstract: bool = False,
        run_timeout: timedelta | float | None = None,
        concurrency: Concurrency | None = None,
        priority: int | None = None,
        rate_limit: RateLimit | None = None,
        **options: Unpack[FlowOptions],
    ) -> None:
        super().__init_subclass__()
        if abstract:
            return
        steps: dict[str, StepMethod] = {}
        for klass in reversed(cls.__mro__):
            for attribute, value in vars(klass).items():
                if isinstance(value, StepMethod):
                    steps.pop(attribute, None)
                    steps[attribute] = value
        _attach(
            cls,
            slug=slug,
            flow_type=FlowType.FLOW,
            steps=[method.definition() for method in steps.values()],
            handlers={
                m.slug: _handler_spec(cls, attr, m.function)
                for attr, m in steps.items()
                if m.has_handler
            },
            options=options_given(options, FLOW_OPTIONS, f"flow {cls.__qualname__}"),
            schedule=schedule,
            run_timeout=_whole_seconds(run_timeout, f"flow {cls.__qualname__}: run_timeout"),
            concurrency=concurrency,
            priority=priority,
            rate_limit=rate_limit,
        )
        # @subflow methods (pgflow.dsl_subflow) compute child inputs; the worker runs them.
        cls.__pgflow_subflows__ = {
            m.slug: _handler_spec(cls, attr, m.function)
            for attr, m in steps.items()
            if getattr(m, "child", None) is not None
        }
        _refuse_subflow_cycle(cls)


# flow slug -> the flow slugs its subflow steps run, for every flow class defined so far (a
# class defined again under the same slug replaces its entry).
_SUBFLOW_EDGES: dict[str, tuple[str, ...]] = {}


def _refuse_subflow_cycle(cls: type[Flow]) -> None:
    """A flow that would start itself, directly or through other flows, is refused: its runs
    would never end. Children named by slug and defined later are checked when they are."""
    definition = cls.__pgflow_definition__
    children = tuple(s.subflow for s in definition.steps if s.subflow is not None)
    edges = {**_SUBFLOW_EDGES, definition.slug: children}
    path = _path_back(definition.slug, edges)
    if path:
        raise FlowDefinitionError(
            f"{cls.__module__}.{cls.__qualname__}: subflow cycle {' -> '.join(path)}: a flow "
            "cannot run itself as a subflow, directly or through other flows"
        )
    _SUBFLOW_EDGES[definition.slug] = children


def _path_back(start: str, edges: dict[str, tuple[str, ...]]) -> list[str] | None:
    """A path start -> ... -> start through ``edges``, or None."""
    seen: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        for child in edges.get(node, ()):
            if child == start:
                return [*path, child]
            if child not in seen:
                seen.add(child)
                if found := visit(child, [*path, child]):
                    return found
        return None

    return visit(start, [start])


class Job(Flow, abstract=True):
    """A single-step flow (``flow_type`` 'job'): implement ``perform(self, input, ctx)``.

    Class keywords as for :class:`Flow`, plus ``start_delay`` (seconds) for its one step.
    """

    def __init_subclass__(
        cls,
        *,
        slug: str | None = None,
        schedule: Cron | Sequence[Cron] | None = None,
        abstract: bool = False,
        run_timeout: timedelta | float | None = None,
        concurrency: Concurrency | None = None,
        priority: int | None = None,
        rate_limit: RateLimit | None = None,
        **options: Unpack[StepOptions],
    ) -> None:
        super(Flow, cls).__init_subclass__()
        if abstract:
            return
        given = options_given(options, STEP_OPTIONS, f"job {cls.__qualname__}")
        perform = getattr(cls, JOB_STEP_SLUG, None)
        if not callable(perform):
            raise FlowDefinitionError(
                f"job {cls.__qualname__} must define perform(self, input, ctx)"
            )
        # A job runs perform() only: a decorated step would be silently dropped.
        stray = [
            attribute
            for klass in cls.__mro__
            for attribute, value in vars(klass).items()
            if isinstance(value, StepMethod)
        ]
        if stray:
            raise FlowDefinitionError(
                f"job {cls.__qualname__} has one step, perform(); its @step/@map_step methods "
                f"({', '.join(sorted(set(stray)))}) would never run: make it a Flow to have "
                "several steps"
            )
        _attach(
            cls,
            slug=slug,
            flow_type=FlowType.JOB,
            steps=[StepDefinition(JOB_STEP_SLUG, start_delay=given.pop("start_delay"))],
            handlers={JOB_STEP_SLUG: _handler_spec(cls, JOB_STEP_SLUG, perform)},
            options=given,
            schedule=schedule,
            run_timeout=_whole_seconds(run_timeout, f"job {cls.__qualname__}: run_timeout"),
            concurrency=concurrency,
            priority=priority,
            rate_limit=rate_limit,
        )


def _attach(
    cls: type[Flow],
    *,
    slug: str | None,
    flow_type: FlowType,
    steps: list[StepDefinition],
    handlers: dict[str, HandlerSpec],
    options: dict[str, int | None],
    schedule: Cron | Sequence[Cron] | None = None,
    run_timeout: int | None = None,
    concurrency: Concurrency | None = None,
    priority: int | None = None,
    rate_limit: RateLimit | None = None,
) -> None:
    try:
        definition = FlowDefinition(
            slug=slug if slug is not None else _snake_case(cls.__name__),
            steps=tuple(steps),
            flow_type=flow_type,
            run_timeout=run_timeout,
            concurrency=concurrency,
            priority=priority,
            rate_limit=rate_limit,
            **options,
        )
    except FlowDefinitionError as exc:
        raise FlowDefinitionError(f"{cls.__module__}.{cls.__qualname__}: {exc}") from None
    cls.__pgflow_definition__ = definition
    cls.__pgflow_handlers__ = handlers
    cls.__pgflow_subflows__ = {}
    cls.__pgflow_schedules__ = bind_declared(
        f"{cls.__module__}.{cls.__qualname__}", definition, schedule
    )


def definition_of(target: type[Flow] | FlowDefinition) -> FlowDefinition:
    """The validated definition of a Flow/Job class (a definition is returned as is)."""
    if isinstance(target, FlowDefinition):
        return target
    definition = vars(target).get("__pgflow_definition__") if isinstance(target, type) else None
    if not isinstance(definition, FlowDefinition):
        raise TypeError(f"{target!r} is not a concrete pgflow Flow or Job class")
    return definition
