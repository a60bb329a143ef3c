"""Helpers shared by the threads that sit in a selector: a wake-up pipe and /proc reads."""

from __future__ import annotations

import os
import selectors


class Waker:
    """A pipe registered in ``selector`` (with data None) so another thread can end a select."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        selector.register(self._read_fd, selectors.EVENT_READ, None)

    def wake(self) -> None:
        """Never blocks: if the pipe is full a wake-up is already pending."""
        try:
            os.write(self._write_fd, b"\0")
        except BlockingIOError:
            pass

    def drain(self) -> None:
        try:
            while os.read(self._read_fd, 4096):
                pass
        except BlockingIOError:
            pass


def proc_stat(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after "pid (comm)" — state, ppid, ... — or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            # comm may contain spaces and parentheses: split after the last ')'.
            return stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
