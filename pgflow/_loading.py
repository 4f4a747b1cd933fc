"""Find flow definitions from references: ``"pkg.module"``, ``"pkg.module:Class"``, modules,
Flow/Job classes or FlowDefinition objects. Used by ``pgflow compile`` and the Alembic plugin.
"""

from __future__ import annotations

import importlib
import traceback
from types import ModuleType
from typing import Any, TypeGuard

from pgflow.cron import Cron, schedules_of
from pgflow.definition import FlowDefinition
from pgflow.dsl import Flow, definition_of
from pgflow.errors import FlowImportError

FlowSource = str | ModuleType | type | FlowDefinition


def discover(source: FlowSource) -> list[tuple[FlowDefinition, str]]:
    """``(definition, origin)`` pairs for a source; origin names where it was found."""
    if isinstance(source, FlowDefinition):
        return [(source, f"FlowDefinition {source.slug!r}")]
    if isinstance(source, str):
        return discover(_import_reference(source))
    if isinstance(source, ModuleType):
        return _definitions_in_module(source)
    if is_concrete_flow_class(source):
        return [(definition_of(source), _qualname(source))]
    raise FlowImportError(f"{source!r} is not a concrete pgflow Flow or Job class, nor a module")


def load_definitions(*sources: FlowSource) -> list[FlowDefinition]:
    """Definitions of all sources in order; one slug used by two different flows is an error."""
    found: dict[str, tuple[FlowDefinition, str]] = {}
    for source in sources:
        for definition, origin in discover(source):
            existing = found.setdefault(definition.slug, (definition, origin))
            if existing[0] != definition:
                raise FlowImportError(
                    f"two different flows use the slug {definition.slug!r} "
                    f"({existing[1]} and {origin}); flow slugs must be unique"
                )
    return [definition for definition, _ in found.values()]


def _import_reference(reference: str) -> Any:
    module_name, _, attribute = reference.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise FlowImportError(f"cannot import {module_name!r} (from {reference!r}): {exc}") from exc
    except SyntaxError as exc:
        where = f"{exc.filename}, line {exc.lineno}" if exc.filename else "unknown file"
        raise FlowImportError(
            f"cannot import {module_name!r} (from {reference!r}): {type(exc).__name__}: "
            f"{exc.msg} ({where})"
        ) from exc
    except Exception as exc:
        # The module itself raised while being imported: name the place, not only the error.
        frames = traceback.extract_tb(exc.__traceback__)
        where = f" ({frames[-1].filename}, line {frames[-1].lineno})" if frames else ""
        raise FlowImportError(
            f"cannot import {module_name!r} (from {reference!r}): importing it raised "
            f"{type(exc).__name__}: {exc}{where}"
        ) from exc
    for part in attribute.split(".") if attribute else ():
        try:
            target = getattr(target, part)
        except AttributeError:
            raise FlowImportError(f"{module_name!r} has no attribute {attribute!r}") from None
    return target


def _definitions_in_module(module: ModuleType) -> list[tuple[FlowDefinition, str]]:
    classes = _flow_classes_defined_in(module)
    found = []
    for name, value in vars(module).items():  # in definition order
        if isinstance(value, FlowDefinition):
            found.append((value, f"{module.__name__}.{name}"))
        elif value in classes:
            found.append((definition_of(value), _qualname(value)))
    if not found:
        # For autogenerate, registering nothing would make every flow of the module look removed.
        raise FlowImportError(f"module {module.__name__!r} defines no concrete Flow or Job class")
    return found


def is_concrete_flow_class(value: object) -> TypeGuard[type[Flow]]:
    """A Flow or Job subclass with its own definition (not ``Flow``, ``Job`` or a base class)."""
    return (
        isinstance(value, type)
        and issubclass(value, Flow)
        and "__pgflow_definition__" in vars(value)
    )


def _flow_classes_defined_in(module: ModuleType) -> list[type[Flow]]:
    """Concrete flow classes defined in the module or a submodule (a package re-exporting its
    flows), not ones it imported from elsewhere."""
    prefix = module.__name__ + "."
    return [
        value
        for value in vars(module).values()
        if is_concrete_flow_class(value)
        and (value.__module__ == module.__name__ or value.__module__.startswith(prefix))
    ]


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def flow_classes(reference: str) -> list[type[Flow]]:
    """The Flow/Job classes a ``module`` or ``module:Class`` reference names (for workers)."""
    target = _import_reference(reference)
    if is_concrete_flow_class(target):
        return [target]
    if isinstance(target, ModuleType) and (classes := _flow_classes_defined_in(target)):
        return classes
    raise FlowImportError(f"{reference!r} names no concrete Flow or Job class")


def discover_schedules(source: FlowSource) -> list[tuple[Cron, str]]:
    """``(schedule, origin)`` for the schedules declared on the classes a source names (a bare
    ``FlowDefinition`` declares none)."""
    target = _import_reference(source) if isinstance(source, str) else source
    if isinstance(target, ModuleType):
        classes = _flow_classes_defined_in(target)
    elif is_concrete_flow_class(target):
        classes = [target]
    else:
        classes = []
    return [(cron, _qualname(cls)) for cls in classes for cron in schedules_of(cls)]
