"""Reading the code blocks of a page in docs/, so tests can run them as written."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class Block:
    language: str
    text: str
    section: str  # the nearest heading above the block


def blocks(page: str, language: str | None = None) -> list[Block]:
    """The fenced blocks of ``docs/<page>`` in order, optionally only one language."""
    text = (DOCS / page).read_text()
    found = []
    for match in _FENCE.finditer(text):
        headings = re.findall(r"^#+ (.+)$", text[: match.start()], re.MULTILINE)
        found.append(Block(match.group(1), match.group(2), headings[-1] if headings else ""))
    return [b for b in found if language is None or b.language == language]


def block(page: str, section: str, language: str) -> str:
    """The one block of that language under the heading ``section``."""
    matching = [b.text for b in blocks(page, language) if b.section == section]
    assert len(matching) == 1, f"docs/{page}: {len(matching)} {language} blocks under {section!r}"
    return matching[0]


@dataclass(frozen=True)
class Console:
    commands: list[str]  # the "$ " lines, prompt removed
    output: list[str]  # every other non-empty line


def console(text: str) -> Console:
    commands = [line[2:] for line in text.splitlines() if line.startswith("$ ")]
    output = [line for line in text.splitlines() if line and not line.startswith("$ ")]
    return Console(commands, output)
