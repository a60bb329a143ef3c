"""Processes seen from outside: /proc reads (a process's state and parent, for pid
watching and ``status``), and whether this system has pidfds."""

from __future__ import annotations

import os

# pidfds (Linux >= 5.3): a process's exit as a readable file descriptor.  Without
# them, exits are polled for.
HAVE_PIDFD = hasattr(os, "pidfd_open")


def proc_stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after "pid (comm)" — state, ppid, ... — or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # comm may contain spaces and parentheses: split after the last ')'.
            return stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_uid(pid: int) -> int | None:
    """The effective uid ``pid`` runs as, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"Uid:"):
                    return int(line.split()[2])
    except (OSError, ValueError, IndexError):
        pass
    return None


def listener_uids() -> set[int]:
    """The users running a zkwatcher-supervisor process now (from every /proc/*/cmdline)."""
    uids = set()
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return uids
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                text = cmdline.read(4096)
                if b"zkwatcher-supervisor" not in text and b"zkwatcher_supervisor" not in text:
                    continue
        except OSError:
            continue
        uid = process_uid(int(pid))
        if uid is not None:
            uids.add(uid)
    return uids


def process_cmdline(pid: int) -> bytes:
    """The first 4 KiB of ``pid``'s command line, NUL-separated; empty if unreadable."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return cmdline.read(4096)
    except OSError:
        return b""


def parent_pid(pid: int) -> int | None:
    fields = proc_stat(pid)
    try:
        return int(fields[1]) if fields else None
    except (ValueError, IndexError):
        return None
