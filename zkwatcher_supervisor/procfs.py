"""Reading /proc: a process's state and parent, for pid watching and ``status``."""

from __future__ import annotations


def proc_stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after "pid (comm)" — state, ppid, ... — or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # comm may contain spaces and parentheses: split after the last ')'.
            return stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
