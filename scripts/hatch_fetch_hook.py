"""Hatch build hook: make sure the pinned upstream pgflow SQL is in place before packaging."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class FetchUpstreamHook(BuildHookInterface):  # type: ignore[misc]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        script = Path(self.root) / "scripts" / "fetch_upstream.py"
        spec = importlib.util.spec_from_file_location("_pgflow_fetch_upstream", script)
        if spec is None or spec.loader is None:
            raise RuntimeError(f"cannot load {script}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        if not module.files_ok():
            module.fetch()
