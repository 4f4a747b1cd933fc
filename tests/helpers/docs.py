"""Reading the code blocks of a page in docs/, so tests can run them as written."""

from __future__ import annotations

import re
import subprocess
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


ROOT = DOCS.parent
SHELL_LANGUAGES = ("console", "shell", "bash", "sh")
ILLUSTRATIVE = re.compile(r"^<!-- illustrative: (?P<why>\S.*\S) -->$")
"""The line right above a shell block that no test runs, saying why (a benchmark, a sample of
output that differs on every run, a server that runs until stopped...)."""

_ANY_FENCE = re.compile(r"^([ \t]*)```(\w*)[^\n]*\n(.*?)^[ \t]*```", re.MULTILINE | re.DOTALL)


@dataclass(frozen=True)
class ShellBlock:
    page: str  # "docs/alembic.md", "README.md"
    line: int  # of the opening fence
    first_line: str  # the block's first line, stripped (its command)
    illustrative: str | None  # why, when marked as illustrative


def shell_blocks() -> list[ShellBlock]:
    """Every shell or console block of docs/*.md and README.md, indented ones (in lists) too."""
    pages = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
    found = []
    for path in pages:
        text = path.read_text()
        for match in _ANY_FENCE.finditer(text):
            if match.group(2) not in SHELL_LANGUAGES:
                continue
            above = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
            marked = ILLUSTRATIVE.match(above)
            body = match.group(3).strip().splitlines()
            found.append(
                ShellBlock(
                    page=str(path.relative_to(ROOT)),
                    line=text.count("\n", 0, match.start()) + 1,
                    first_line=body[0].strip() if body else "",
                    illustrative=marked.group("why") if marked else None,
                )
            )
    return found


def matches(expected: list[str], actual: list[str]) -> bool:
    """``actual`` is ``expected`` line for line, where a line ``…`` stands for any lines."""
    if not expected:
        return not actual
    if expected[0] == "…":
        return any(matches(expected[1:], actual[skip:]) for skip in range(len(actual) + 1))
    return bool(actual) and actual[0] == expected[0] and matches(expected[1:], actual[1:])


def run_console(
    text: str, *, cwd: Path, environment: dict[str, str], url: str | None = None
) -> None:
    """Run a console block's ``$`` commands one by one with bash (``export NAME=VALUE`` lines
    set the environment of the ones after; with ``url``, an exported ``DATABASE_URL`` is that
    URL instead of the page's) and check that each printed the lines shown under it."""
    environment = dict(environment)
    command, expected = None, []
    for line in [*text.splitlines(), "$ "]:
        if not line.startswith("$ "):
            expected.append(line)
            continue
        if command is not None:
            exported = re.fullmatch(r"export (\w+)=(\S+)", command)
            if exported:
                name, value = exported.groups()
                environment[name] = url if name == "DATABASE_URL" and url else value.strip("'\"")
                assert not expected, f"{command!r} prints nothing"
            else:
                done = subprocess.run(
                    ["bash", "-c", command],
                    cwd=cwd,
                    env=environment,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    timeout=300,
                    check=False,
                )
                assert done.returncode == 0, f"{command!r} exited {done.returncode}:\n{done.stdout}"
                printed = done.stdout.rstrip("\n").splitlines()
                assert matches(expected, printed), (
                    f"{command!r} printed:\n{done.stdout}\nthe page shows:\n" + "\n".join(expected)
                )
        command, expected = line[2:], []
