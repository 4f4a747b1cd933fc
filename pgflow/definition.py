"""Immutable flow definitions and their validation.

Everything downstream (compiler, Alembic plugin, worker, shape checks) consumes these objects,
never the DSL classes. A definition is plain data: ``to_dict``/``from_dict`` round-trip it, which
is how Alembic revisions carry a flow without importing application code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, TypedDict, TypeVar

from pgflow.errors import FlowDefinitionError
from pgflow.flow_control import Concurrency, RateLimit, checked_priority

SLUG_MAX_LENGTH = 128
RESERVED_SLUGS = frozenset({"run"})
_SLUG = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_INT4_MAX = 2**31 - 1
_E = TypeVar("_E", bound=StrEnum)


class StepType(StrEnum):
    SINGLE = "single"
    MAP = "map"


class FlowType(StrEnum):
    FLOW = "flow"
    JOB = "job"


class WaitKind(StrEnum):
    """What a step with no handler waits for (docs/waiting.md)."""

    SIGNAL = "signal"
    """Trusted code sends the step's output with ``pgflow.signal``."""


class OnTimeout(StrEnum):
    """What happens to a wait step whose timeout passes with no signal."""

    FAIL = "fail"
    """The step and the run fail, with a message saying the wait timed out."""
    SKIP = "skip"
    """The step is skipped: its dependents run without its key."""


class FlowOptions(TypedDict, total=False):
    """Options of a flow (class keywords of ``Flow`` and ``Job``); omitted, upstream's apply."""

    max_attempts: int
    base_delay: int
    timeout: int


class StepOptions(FlowOptions, total=False):
    """Options of a step (keywords of ``@step`` and ``@map_step``, and of a ``Job`` class);
    omitted, the flow's apply."""

    start_delay: int


FLOW_OPTIONS: tuple[str, ...] = tuple(FlowOptions.__annotations__)
STEP_OPTIONS: tuple[str, ...] = tuple(StepOptions.__annotations__)


def options_given(
    options: Mapping[str, Any], names: tuple[str, ...], where: str
) -> dict[str, int | None]:
    """Every option in ``names`` (None where not given); an unknown keyword is a TypeError, as
    for any misspelled keyword argument."""
    unknown = sorted(set(options) - set(names))
    if unknown:
        raise TypeError(f"{where} got unexpected keyword argument {unknown[0]!r}")
    return {name: options.get(name) for name in names}


# option -> (smallest allowed value, what it means). The minimums are @pgflow/dsl 0.8.1's, so a
# flow defined here is one the TypeScript DSL would accept too. Omitted options stay None so that
# upstream's SQL defaults apply (create_flow: max_attempts 3, base_delay 5 s, timeout 60 s).
OPTION_MINIMUMS: Mapping[str, tuple[int, str]] = {
    "max_attempts": (1, "tries in total, including the first"),
    "base_delay": (1, "seconds; retry n waits base_delay * 2^n"),
    "timeout": (3, "seconds a task may run"),
    "start_delay": (0, "seconds before a step's tasks become visible"),
}


class WhenUnmet(StrEnum):
    """What happens to a step whose condition (``if_`` / ``if_not``) is not met, and (as
    ``retries_exhausted``) to a step that ran out of attempts. Upstream 0.14's values."""

    FAIL = "fail"
    """The run fails with a message naming the step (``retries_exhausted``'s default)."""
    SKIP = "skip"
    """The step is skipped; its dependents run without its key (``when_unmet``'s default)."""
    SKIP_CASCADE = "skip-cascade"
    """The step and every step downstream of it are skipped."""


CONDITION_OPTIONS: tuple[str, ...] = ("if_", "if_not", "when_unmet", "retries_exhausted")
"""Step keywords that make a step conditional (stored by our SQL, not by ``add_step``)."""

# What upstream's SQL does when a mode is omitted (upstream 0.14's column defaults).
CONDITION_DEFAULTS: Mapping[str, str] = {"when_unmet": "skip", "retries_exhausted": "fail"}


def validate_slug(slug: object, what: str) -> str:
    """Upstream's slug rules (SQL ``is_valid_slug`` and the TypeScript DSL's, which is stricter)."""
    if not isinstance(slug, str) or not slug:
        raise FlowDefinitionError(f"{what} slug must be a non-empty string, got {slug!r}")
    if len(slug) > SLUG_MAX_LENGTH:
        raise FlowDefinitionError(
            f"{what} slug {slug[:20]!r}… is {len(slug)} characters; at most {SLUG_MAX_LENGTH}"
        )
    if slug in RESERVED_SLUGS:
        raise FlowDefinitionError(f"{what} slug {slug!r} is reserved by pgflow; choose another")
    if not _SLUG.match(slug):
        raise FlowDefinitionError(
            f"{what} slug {slug!r} is invalid: use letters, digits and underscores, "
            "starting with a letter (e.g. 'analyze_website')"
        )
    return slug


def _validate_option(owner: str, name: str, value: object) -> None:
    if value is None:
        return
    minimum, meaning = OPTION_MINIMUMS[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise FlowDefinitionError(f"{owner}: {name} must be an integer ({meaning}), got {value!r}")
    if value < minimum:
        raise FlowDefinitionError(
            f"{owner}: {name} must be at least {minimum} ({meaning}; the same minimum as "
            f"TypeScript pgflow's DSL), got {value}"
        )
    if value > _INT4_MAX:
        raise FlowDefinitionError(
            f"{owner}: {name} must be at most {_INT4_MAX} ({meaning}), got {value}"
        )


@dataclass(frozen=True, slots=True)
class StepDefinition:
    """One step: its slug, type, dependencies (in declaration order) and options."""

    slug: str
    step_type: StepType = StepType.SINGLE
    depends_on: tuple[str, ...] = ()
    max_attempts: int | None = None
    base_delay: int | None = None
    timeout: int | None = None
    start_delay: int | None = None
    if_: Any = None
    """JSON containment pattern (``@>``) the step's input must match for it to run."""
    if_not: Any = None
    """JSON containment pattern the step's input must not match for it to run."""
    when_unmet: str | None = None
    """``WhenUnmet`` value when the condition is not met; omitted: ``"skip"``."""
    retries_exhausted: str | None = None
    """``WhenUnmet`` value when the step runs out of attempts; omitted: ``"fail"``."""
    wait: WaitKind | None = None
    """Set for a step with no handler that waits (``@wait_step``)."""
    wait_timeout: int | None = None
    """Seconds a wait step waits before ``on_timeout`` applies; None: for ever."""
    on_timeout: OnTimeout | None = None
    """What a wait step's timeout does; omitted: ``"fail"``."""
    subflow: str | None = None
    """Slug of the flow a subflow step runs (``@subflow``); its run's output is the output."""
    concurrency: Concurrency | None = None
    """Per-key limit on this step's tasks in flight (replaces the flow's for them)."""
    rate_limit: RateLimit | None = None
    """Per-key limit on this step's task starts per period (with the flow's, if any)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "step_type", StepType(self.step_type))
        if self.concurrency is not None:
            object.__setattr__(self, "concurrency", Concurrency.from_dict(self.concurrency))
        if self.rate_limit is not None:
            object.__setattr__(self, "rate_limit", RateLimit.from_dict(self.rate_limit))
        if self.wait is not None:
            object.__setattr__(self, "wait", _enum(WaitKind, self.wait, f"step {self.slug!r}"))
        if self.on_timeout is not None:
            on_timeout = _enum(OnTimeout, self.on_timeout, f"step {self.slug!r}: on_timeout")
            object.__setattr__(self, "on_timeout", on_timeout)
        object.__setattr__(self, "depends_on", tuple(self.depends_on))

    def __hash__(self) -> int:
        # Definitions are dictionary keys (e.g. the client's once-per-definition check); a
        # pattern is a dict, so it is hashed as canonical JSON.
        return hash(
            (
                self.slug,
                self.step_type,
                self.depends_on,
                tuple(self.options.values()),
                json.dumps(self.condition, sort_keys=True),
            )
        )

    @property
    def options(self) -> dict[str, int | None]:
        return {name: getattr(self, name) for name in OPTION_MINIMUMS}

    @property
    def condition(self) -> dict[str, Any]:
        """The condition options as given (None where omitted)."""
        return {name: getattr(self, name) for name in CONDITION_OPTIONS}

    @property
    def has_condition(self) -> bool:
        return any(value is not None for value in self.condition.values())

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"slug": self.slug}
        if self.step_type is not StepType.SINGLE:
            data["step_type"] = str(self.step_type)
        if self.depends_on:
            data["depends_on"] = list(self.depends_on)
        data.update({k: v for k, v in self.options.items() if v is not None})
        data.update({k: v for k, v in self.condition.items() if v is not None})
        data.update(
            {
                k: str(v) if isinstance(v, StrEnum) else v
                for k, v in self.wait_options.items()
                if v is not None
            }
        )
        if self.subflow is not None:
            data["subflow"] = self.subflow
        if self.concurrency is not None:
            data["concurrency"] = self.concurrency.to_dict()
        if self.rate_limit is not None:
            data["rate_limit"] = self.rate_limit.to_dict()
        return data

    @property
    def wait_options(self) -> dict[str, Any]:
        """``wait``, ``wait_timeout`` and ``on_timeout`` (None where not set)."""
        return {"wait": self.wait, "wait_timeout": self.wait_timeout, "on_timeout": self.on_timeout}


def _enum(kind: type[_E], value: object, where: str) -> _E:
    try:
        return kind(str(value))
    except ValueError:
        choices = ", ".join(repr(m.value) for m in kind)
        raise FlowDefinitionError(f"{where} must be one of {choices}, got {value!r}") from None


@dataclass(frozen=True, slots=True)
class FlowDefinition:
    """A validated flow: slug, options and steps in declaration order."""

    slug: str
    steps: tuple[StepDefinition, ...]
    flow_type: FlowType = FlowType.FLOW
    max_attempts: int | None = None
    base_delay: int | None = None
    timeout: int | None = None
    run_timeout: int | None = None
    """Seconds after which a run still going is cancelled (stored by our SQL, not
    ``create_flow``); None: no deadline."""
    concurrency: Concurrency | None = None
    """Per-key limit on the flow's tasks in flight, all steps together (docs/flow-control.md)."""
    rate_limit: RateLimit | None = None
    """Per-key limit on the flow's task starts per period, all steps together."""
    priority: int | None = None
    """Default priority of the flow's runs (higher starts first); None: 0, with no trigger."""
    _by_slug: dict[str, StepDefinition] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        object.__setattr__(self, "flow_type", FlowType(self.flow_type))
        if self.concurrency is not None:
            object.__setattr__(self, "concurrency", Concurrency.from_dict(self.concurrency))
        if self.rate_limit is not None:
            object.__setattr__(self, "rate_limit", RateLimit.from_dict(self.rate_limit))
        _validate(self)
        object.__setattr__(self, "_by_slug", {s.slug: s for s in self.steps})

    def step(self, slug: str) -> StepDefinition:
        try:
            return self._by_slug[slug]
        except KeyError:
            raise KeyError(f"flow {self.slug!r} has no step {slug!r}") from None

    @property
    def options(self) -> dict[str, int | None]:
        return {
            "max_attempts": self.max_attempts,
            "base_delay": self.base_delay,
            "timeout": self.timeout,
        }

    @property
    def shape(self) -> tuple[tuple[str, StepType, tuple[str, ...]], ...]:
        """What cannot change once a flow exists in the database: steps, types, dependencies."""
        return tuple((s.slug, s.step_type, s.depends_on) for s in self.steps)

    def dependents(self, slug: str) -> tuple[str, ...]:
        return tuple(s.slug for s in self.steps if slug in s.depends_on)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"slug": self.slug}
        if self.flow_type is not FlowType.FLOW:
            data["flow_type"] = str(self.flow_type)
        data.update({k: v for k, v in self.options.items() if v is not None})
        if self.run_timeout is not None:
            data["run_timeout"] = self.run_timeout
        if self.concurrency is not None:
            data["concurrency"] = self.concurrency.to_dict()
        if self.rate_limit is not None:
            data["rate_limit"] = self.rate_limit.to_dict()
        if self.priority is not None:
            data["priority"] = self.priority
        data["steps"] = [s.to_dict() for s in self.steps]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FlowDefinition:
        known = {f.name for f in fields(cls) if f.init} | {"steps"}
        unknown = set(data) - known
        if unknown:
            raise FlowDefinitionError(f"unknown flow keys: {sorted(unknown)}")
        steps = [_step_from_dict(s) for s in data.get("steps", [])]
        return cls(**{**data, "steps": tuple(steps)})


def _step_from_dict(data: Mapping[str, Any]) -> StepDefinition:
    known = {f.name for f in fields(StepDefinition)}
    unknown = set(data) - known
    if unknown:
        raise FlowDefinitionError(f"step {data.get('slug')!r}: unknown keys {sorted(unknown)}")
    return StepDefinition(**data)


def _validate(flow: FlowDefinition) -> None:
    validate_slug(flow.slug, "flow")
    owner = f"flow {flow.slug!r}"
    for name in ("max_attempts", "base_delay", "timeout"):
        _validate_option(owner, name, getattr(flow, name))
    _validate_seconds(owner, "run_timeout", flow.run_timeout, "seconds a run may take")
    if flow.priority is not None:
        checked_priority(flow.priority, owner)
    if not flow.steps:
        raise FlowDefinitionError(f"{owner} has no steps; define at least one")
    if flow.flow_type is FlowType.JOB and len(flow.steps) != 1:
        raise FlowDefinitionError(f"job {flow.slug!r} must have exactly one step")
    seen: dict[str, int] = {}
    for index, step in enumerate(flow.steps):
        validate_slug(step.slug, f"{owner}: step")
        where = f"{owner}, step {step.slug!r}"
        if step.slug in seen:
            raise FlowDefinitionError(f"{owner} defines step {step.slug!r} twice")
        seen[step.slug] = index
        for name in OPTION_MINIMUMS:
            _validate_option(where, name, getattr(step, name))
        _validate_condition(where, step)
        _validate_wait(where, step)
        _validate_subflow(where, step)
    _check_dependencies(flow, seen)


def _validate_condition(where: str, step: StepDefinition) -> None:
    for name in ("when_unmet", "retries_exhausted"):
        value = getattr(step, name)
        if value is not None and value not in {m.value for m in WhenUnmet}:
            choices = ", ".join(repr(m.value) for m in WhenUnmet)
            raise FlowDefinitionError(f"{where}: {name} must be one of {choices}, got {value!r}")
    patterns = {name: getattr(step, name) for name in ("if_", "if_not")}
    given = {name: pattern for name, pattern in patterns.items() if pattern is not None}
    if step.when_unmet is not None and not given:
        raise FlowDefinitionError(
            f"{where}: when_unmet={step.when_unmet!r} needs a condition (if_= or if_not=)"
        )
    for name, pattern in given.items():
        try:
            text = json.dumps(pattern, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise FlowDefinitionError(
                f"{where}: {name} must be a JSON pattern (dicts, lists, strings, numbers, "
                f"booleans, None), got {pattern!r}: {exc}"
            ) from None
        object.__setattr__(step, name, json.loads(text))  # detached from the caller's object
        if not step.depends_on:
            continue  # a root step's input is the flow input: any JSON
        if not isinstance(pattern, dict):
            raise FlowDefinitionError(
                f"{where}: {name} is matched against {{dependency: output, ...}}, so it must "
                f"be a dict keyed by dependencies ({', '.join(step.depends_on)}), got {pattern!r}"
            )
        strangers = [key for key in pattern if key not in step.depends_on]
        if strangers:
            raise FlowDefinitionError(
                f"{where}: {name} names {', '.join(map(repr, strangers))}, which "
                f"{'is' if len(strangers) == 1 else 'are'} not a dependency of this step "
                f"(dependencies: {', '.join(step.depends_on)}); no input could match it"
            )


def _validate_seconds(owner: str, name: str, value: object, meaning: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise FlowDefinitionError(
            f"{owner}: {name} must be whole seconds ({meaning}), got {value!r}"
        )
    if not 0 < value <= _INT4_MAX:
        raise FlowDefinitionError(
            f"{owner}: {name} must be between 1 and {_INT4_MAX} seconds ({meaning}), got {value}"
        )


def _validate_wait(where: str, step: StepDefinition) -> None:
    if step.wait is None:
        if step.wait_timeout is not None or step.on_timeout is not None:
            raise FlowDefinitionError(
                f"{where}: wait_timeout and on_timeout are for wait steps (@wait_step) only"
            )
        return
    _validate_seconds(where, "wait_timeout", step.wait_timeout, "how long the step waits")
    if step.step_type is not StepType.SINGLE:
        raise FlowDefinitionError(
            f"{where}: a wait step waits for one signal, so it cannot be a map step; map over "
            "the signalled output in a step that depends on it"
        )
    given = [name for name, value in step.options.items() if value is not None]
    if given:
        raise FlowDefinitionError(
            f"{where}: a wait step runs no handler, so {', '.join(given)} would mean nothing; "
            "its only options are timeout and on_timeout"
        )


def _validate_subflow(where: str, step: StepDefinition) -> None:
    if step.subflow is None:
        return
    validate_slug(step.subflow, f"{where}: subflow")
    if step.wait is not None:
        raise FlowDefinitionError(f"{where}: a step is a wait step or a subflow step, not both")
    if step.start_delay is not None:
        raise FlowDefinitionError(
            f"{where}: a subflow step starts its child as soon as it is ready; start_delay "
            "would mean nothing (its options max_attempts, base_delay and timeout apply to "
            "the method that computes the child's input)"
        )


def _check_dependencies(flow: FlowDefinition, position: Mapping[str, int]) -> None:
    owner = f"flow {flow.slug!r}"
    cycle = _find_cycle({s.slug: s.depends_on for s in flow.steps})
    if cycle:
        raise FlowDefinitionError(f"{owner} has a dependency cycle: {' -> '.join(cycle)}")
    for step in flow.steps:
        where = f"{owner}, step {step.slug!r}"
        if len(set(step.depends_on)) != len(step.depends_on):
            raise FlowDefinitionError(f"{where} lists a dependency twice: {list(step.depends_on)}")
        for dep in step.depends_on:
            if not isinstance(dep, str) or dep not in position:
                known = ", ".join(sorted(position)) or "none"
                raise FlowDefinitionError(
                    f"{where} depends on unknown step {dep!r} (steps: {known})"
                )
            if position[dep] > position[step.slug]:
                raise FlowDefinitionError(
                    f"{where} depends on {dep!r}, which is declared after it: "
                    "declare dependencies first (pgflow keeps declaration order)"
                )
        if step.step_type is StepType.MAP and len(step.depends_on) > 1:
            raise FlowDefinitionError(
                f"{where} is a map step with {len(step.depends_on)} dependencies; a map step "
                "maps over the flow input (no dependency) or over one step's array output"
            )


def _find_cycle(graph: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A dependency cycle as a path (first node repeated at the end), or None."""
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> list[str] | None:
        if node in visiting:
            return [*visiting[visiting.index(node) :], node]
        if node in done or node not in graph:
            return None
        visiting.append(node)
        for dep in graph[node]:
            if found := visit(dep):
                return found
        visiting.pop()
        done.add(node)
        return None

    for node in graph:
        if found := visit(node):
            return found
    return None
