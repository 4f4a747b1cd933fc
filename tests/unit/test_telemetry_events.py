"""Event names are stated once, in ``telemetry.Event``: the source emits no other name, and
docs/observability.md documents exactly these."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from pgflow.telemetry import Event

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = {member.value.partition(".")[0] for member in Event}
EVENT_NAME = re.compile(r"^([a-z]+)\.(?!html$|sql$|py$|json$|css$|js$)[a-z_]+$")


def names_in_source() -> dict[str, str]:
    """Every string literal in the package that looks like an event name of a known family."""
    found: dict[str, str] = {}
    for path in sorted((ROOT / "pgflow").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                match = EVENT_NAME.match(node.value)
                if match and match.group(1) in FAMILIES:
                    found.setdefault(node.value, str(path.relative_to(ROOT)))
    return found


def names_in_docs() -> set[str]:
    """The backticked names in the first column of the events table."""
    text = (ROOT / "docs" / "observability.md").read_text()
    names: set[str] = set()
    for row in re.findall(r"^\| ([^|]*`[a-z]+\.[a-z_]+`[^|]*) \|", text, re.MULTILINE):
        names.update(
            n for n in re.findall(r"`([a-z]+\.[a-z_]+)`", row) if n.partition(".")[0] in FAMILIES
        )
    return names


def test_the_source_emits_only_declared_events() -> None:
    undeclared = {
        name: where for name, where in names_in_source().items() if name not in set(Event)
    }
    assert undeclared == {}


def test_every_declared_event_is_emitted_somewhere() -> None:
    assert {member.value for member in Event} - set(names_in_source()) - {
        Event.TELEMETRY_HOOK_FAILED  # emitted under this name through Event itself
    } == set()


def test_the_docs_list_exactly_the_declared_events() -> None:
    assert sorted(names_in_docs()) == sorted(member.value for member in Event)
