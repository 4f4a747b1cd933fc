"""Which flows autogenerate manages: ``include_flows(...)`` in env.py, and flow discovery.

The registry lives in the running command's ``Config.attributes`` (Alembic's place for such
state), so two Alembic projects driven from one process never see each other's flows. Called
outside an Alembic command, ``include_flows`` fills a process-wide registry instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from alembic import context
from alembic.config import Config

from alembic_pgflow.errors import FlowDiscoveryError
from pgflow._loading import FlowSource, discover, discover_schedules
from pgflow.cron import Cron
from pgflow.definition import FlowDefinition
from pgflow.errors import FlowImportError

_ATTRIBUTE = "alembic_pgflow.registry"


@dataclass(frozen=True)
class Registration:
    """One flow autogenerate manages, and whether its shape may change by deleting its runs."""

    definition: FlowDefinition
    origin: str
    allow_data_loss: bool = False


@dataclass
class FlowRegistry:
    """Flows registered with :func:`include_flows`, plus what to do with flows not registered."""

    flows: dict[str, Registration] = field(default_factory=dict)
    drop_removed: bool | frozenset[str] = False
    schedules: dict[str, tuple[Cron, str]] = field(default_factory=dict)
    """Schedules declared on the registered classes, by name, with where they were declared."""

    def add_schedule(self, cron: Cron, origin: str) -> None:
        name = str(cron.name)
        existing = self.schedules.setdefault(name, (cron, origin))
        if existing[0] != cron:
            raise FlowDiscoveryError(
                f"two different schedules use the name {name!r} ({existing[1]} and {origin}); "
                "schedule names must be unique"
            )

    def add(self, registration: Registration) -> None:
        slug = registration.definition.slug
        existing = self.flows.get(slug)
        if existing is None:
            self.flows[slug] = registration
            return
        if existing.definition != registration.definition:
            raise FlowDiscoveryError(
                f"two different flows use the slug {slug!r} ({existing.origin} and "
                f"{registration.origin}); flow slugs must be unique"
            )
        if registration.allow_data_loss and not existing.allow_data_loss:
            self.flows[slug] = registration

    def should_drop(self, slug: str) -> bool:
        if isinstance(self.drop_removed, frozenset):
            return slug in self.drop_removed
        return self.drop_removed


_process_registry = FlowRegistry()


def include_flows(
    *sources: FlowSource,
    allow_data_loss: bool | Iterable[str] = False,
    drop_removed: bool | Iterable[str] = False,
) -> FlowRegistry:
    """Register flows for autogenerate; call it in env.py, once or several times.

    ``sources`` are module names (``"myapp.flows"``), ``"module:Class"`` references, modules,
    Flow/Job classes or ``FlowDefinition`` objects. A module contributes every concrete Flow or
    Job class defined in it or in its submodules (so a package may re-export them).

    ``allow_data_loss`` (True, or the slugs it applies to) lets a changed shape (steps,
    dependencies, step types) become a drop and re-create that deletes the flow's runs;
    otherwise autogenerate stops and explains. ``drop_removed`` (True, or slugs) drops flows
    that are in the database but registered nowhere; otherwise they are left alone with a
    warning. Both deletions are written into the revision, where review catches them.
    """
    registry = _registry_for(_active_config())
    found: list[tuple[FlowDefinition, str]] = []
    for source in sources:
        found.extend(_definitions_from(source))
    lossy = _slug_filter(allow_data_loss, "allow_data_loss", {d.slug for d, _ in found})
    for definition, origin in found:
        registry.add(Registration(definition, origin, lossy(definition.slug)))
    for source in sources:
        for cron, origin in discover_schedules(source):
            registry.add_schedule(cron, origin)
    if drop_removed is True:
        registry.drop_removed = True
    elif drop_removed is not False and registry.drop_removed is not True:
        named = frozenset(_slugs(drop_removed, "drop_removed"))
        registry.drop_removed = named | (registry.drop_removed or frozenset())
    return registry


def registry_for(config: Config | None) -> FlowRegistry:
    """The registry of the command running with ``config`` (else the process-wide one)."""
    if config is not None:
        found = config.attributes.get(_ATTRIBUTE)
        if isinstance(found, FlowRegistry):
            return found
    return _process_registry


def _active_config() -> Config | None:
    try:
        return context.config
    except AttributeError:  # not inside an Alembic command: no environment is installed
        return None


def _registry_for(config: Config | None) -> FlowRegistry:
    if config is None:
        return _process_registry
    registry = config.attributes.get(_ATTRIBUTE)
    if not isinstance(registry, FlowRegistry):
        registry = config.attributes[_ATTRIBUTE] = FlowRegistry()
    return registry


def _slugs(value: Iterable[str], what: str) -> list[str]:
    if isinstance(value, str):
        raise FlowDiscoveryError(
            f"{what} takes True or a list of flow slugs, not the string {value!r}"
        )
    return list(value)


def _slug_filter(
    value: bool | Iterable[str], what: str, registered: set[str]
) -> Callable[[str], bool]:
    if isinstance(value, bool):
        return lambda _slug: value
    named = set(_slugs(value, what))
    unknown = sorted(named - registered)
    if unknown:
        raise FlowDiscoveryError(
            f"{what} names flows that this include_flows() call does not register: {unknown}"
        )
    return lambda slug: slug in named


def _definitions_from(source: FlowSource) -> list[tuple[FlowDefinition, str]]:
    try:
        return discover(source)
    except FlowImportError as exc:
        raise FlowDiscoveryError(f"include_flows({source!r}): {exc}") from None
