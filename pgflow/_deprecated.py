"""Names that moved to another module, still importable from the old one for one release."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Mapping
from typing import Any


def moved_attribute(module: str, moved: Mapping[str, str], name: str) -> Any:
    """``name`` from its new module (``moved[name]``), with a DeprecationWarning that says where
    to import it from; an AttributeError for any other name (so submodule imports still work)."""
    new_module = moved.get(name)
    if new_module is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    warnings.warn(
        f"importing {name} from {module} is deprecated and stops working in the next release; "
        f"import it from {new_module}",
        DeprecationWarning,
        stacklevel=3,
    )
    return getattr(importlib.import_module(new_module), name)
