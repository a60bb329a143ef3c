"""The command lines README.rst shows, for the tests that run every one of them.

A command is a line of a literal block (a paragraph ending in ``::``, or a
``code-block`` directive) that runs the program asked for: the first word of
the line, or of a command chained in it with ``&&``, ``||``, ``;`` or ``|``,
after a ``sudo`` and without its directory (``/opt/x/bin/supervisorctl`` is
``supervisorctl``).  A ``# or: COMMAND`` line offers an alternative, and is a
command too.  In a block with ``$ `` prompts only the prompted lines are
commands, and the lines after each, up to the next prompt, are the output the
README shows for it.
"""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import zkwatcher_supervisor

PROMPT = "$ "
ALTERNATIVE = "# or: "
_CHAIN = re.compile(r"&&|\|\||;|\|")
_DIRECTIVE = re.compile(r"^\s*\.\. (code-block|code|sourcecode)::")


@dataclass(frozen=True)
class ReadmeCommand:
    line: int  # in README.rst, from 1
    text: str  # as printed, without the prompt
    output: tuple[str, ...] = ()  # what README shows it printing (prompted blocks only)

    @property
    def argv(self) -> list[str]:
        """The words, as a shell splits them; a trailing ``# comment`` dropped."""
        return shlex.split(self.text, comments=True)


def readme_path() -> Path:
    """README.rst of the checkout the package runs from."""
    return Path(zkwatcher_supervisor.__file__).resolve().parent.parent / "README.rst"


def literal_blocks(text: str) -> Iterator[tuple[int, list[str]]]:
    """(line number of its first line, its lines dedented) for each literal block."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        directive = _DIRECTIVE.match(line) is not None
        # ``.. note::`` and the like end in "::" too, and hold prose.
        if not directive and (not line.rstrip().endswith("::")
                              or line.lstrip().startswith(".. ")):
            continue
        outer = len(line) - len(line.lstrip())
        # The blank line(s) after the opening, and a directive's :options:.
        while index < len(lines) and (not lines[index].strip() or (
                directive and lines[index].lstrip().startswith(":"))):
            index += 1
        start = index
        while index < len(lines) and (not lines[index].strip()
                                      or len(lines[index]) - len(lines[index].lstrip()) > outer):
            index += 1
        block = lines[start:index]
        while block and not block[-1].strip():
            block.pop()
        if not block:
            continue
        indent = min(len(item) - len(item.lstrip()) for item in block if item.strip())
        yield start + 1, [item[indent:] for item in block]


def program_of(text: str) -> str:
    """The program a command runs: its first word after a ``sudo``, without its
    directory; "" for one without words."""
    words = text.split()
    if words[:1] == ["sudo"]:
        words = words[1:]
    return os.path.basename(words[0]) if words else ""


def programs_of(text: str) -> list[str]:
    """The program of each command a line chains (one for a simple line)."""
    return [program_of(part) for part in _CHAIN.split(text)]


def readme_lines(path: Path | None = None) -> Iterator[ReadmeCommand]:
    """Every line of every literal block that is not output README shows: in a
    block with prompts, the prompted lines (each with its output); in others,
    every non-blank line (``# or:`` alternatives as the command they offer)."""
    for first, block in literal_blocks((path or readme_path()).read_text()):
        prompted = any(item.startswith(PROMPT) for item in block)
        for offset, item in enumerate(block):
            if prompted and not item.startswith(PROMPT):
                continue
            text = item[len(PROMPT):] if prompted else item
            if text.startswith(ALTERNATIVE):
                text = text[len(ALTERNATIVE):]
            if not text.strip():
                continue
            output: list[str] = []
            if prompted:
                for after in block[offset + 1:]:
                    if after.startswith(PROMPT):
                        break
                    output.append(after)
                while output and not output[-1].strip():
                    output.pop()
            yield ReadmeCommand(first + offset, text.strip(), tuple(output))


def commands(program: str, path: Path | None = None) -> list[ReadmeCommand]:
    """Every command line of ``program`` in README.rst, in order."""
    return [line for line in readme_lines(path) if program in programs_of(line.text)]
