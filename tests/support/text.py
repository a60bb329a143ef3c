"""Reading what the listener and its checks wrote: config lines, log lines, run records."""

from __future__ import annotations

from pathlib import Path


def line_of(config: Path, text: str) -> int:
    """The number of the line of ``config`` that is ``text``."""
    return config.read_text().splitlines().index(text) + 1


def log_lines(path: Path, text: str) -> list[str]:
    """The lines of the log at ``path`` that contain ``text``."""
    return [line for line in path.read_text().splitlines() if text in line]


def count_lines(path: Path) -> int:
    """How many runs a check that appends a line per run has started."""
    return len(path.read_text().splitlines()) if path.exists() else 0
