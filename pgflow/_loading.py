"""Find flow definitions from ``"package.module:Class"`` / ``"package.module"`` references."""

from __future__ import annotations

import importlib
from types import ModuleType

from pgflow.definition import FlowDefinition
from pgflow.dsl import Flow, definition_of
from pgflow.errors import PgflowError


class FlowImportError(PgflowError):
    """A flow reference that does not name an importable Flow/Job class or module."""


def import_reference(reference: str) -> object:
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise FlowImportError(f"cannot import {module_name!r} (from {reference!r}): {exc}") from exc
    if not attribute:
        return module
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise FlowImportError(f"{module_name!r} has no attribute {attribute!r}") from None
    return target


def definitions_in(target: object) -> list[FlowDefinition]:
    """Definitions of a Flow/Job class, a FlowDefinition, or every flow a module defines."""
    if isinstance(target, FlowDefinition):
        return [target]
    if isinstance(target, ModuleType):
        return [
            definition_of(value)
            for value in vars(target).values()
            if isinstance(value, type)
            and issubclass(value, Flow)
            and value.__module__ == target.__name__
            and "__pgflow_definition__" in vars(value)
        ]
    if isinstance(target, type) and issubclass(target, Flow):
        try:
            return [definition_of(target)]
        except TypeError as exc:
            raise FlowImportError(str(exc)) from None
    raise FlowImportError(f"{target!r} is not a Flow or Job class, nor a module of them")


def load_definitions(*references: str) -> list[FlowDefinition]:
    """Definitions named by references, in order; a slug defined twice is an error."""
    definitions: dict[str, FlowDefinition] = {}
    for reference in references:
        for definition in definitions_in(import_reference(reference)):
            existing = definitions.get(definition.slug)
            if existing is not None and existing != definition:
                raise FlowImportError(f"two different flows use the slug {definition.slug!r}")
            definitions[definition.slug] = definition
    return list(definitions.values())
