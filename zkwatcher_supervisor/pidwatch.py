"""Notice a bound program's death before supervisord reports it.

supervisord reaps its children in its poll loop and sends PROCESS_STATE_EXITED
about a second after a SIGKILL.  A pidfd becomes readable the instant the
process dies, so watching the pidfd of every RUNNING bound process in the
event loop lets the listener deregister within milliseconds.

Guarding against pid reuse: a pid is only watched if its parent is our own
parent (supervisord starts both us and the programs), so a recycled pid that
now belongs to an unrelated process is never taken for the program.  The
health state machine also ignores a death notice for any pid but the one it
last saw RUNNING.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from .loop import EventLoop
from .procfs import HAVE_PIDFD, proc_stat

log = logging.getLogger(__name__)

ProcessKey = tuple[str, str]  # (group, name)
DeathCallback = Callable[[str, str, int], None]

def parent_pid(pid: int) -> int:
    """The parent of ``pid`` from /proc, or -1 if it is gone."""
    fields = proc_stat(pid)
    return int(fields[1]) if fields else -1


class PidWatcher:
    """Calls ``on_death(group, name, pid)`` on the loop when a watched pid dies."""

    def __init__(self, loop: EventLoop, on_death: DeathCallback) -> None:
        self._loop = loop
        self._on_death = on_death
        self._watched: dict[ProcessKey, tuple[int, int]] = {}  # key -> (pid, pidfd)

    def watch(self, group: str, name: str, pid: int) -> None:
        """Watch ``pid`` as the RUNNING process ``group:name`` (replacing any older pid)."""
        key = (group, name)
        current = self._watched.get(key)
        if current is not None and current[0] == pid:
            return
        self.forget(group, name)
        if not HAVE_PIDFD or pid <= 0:
            return
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            # Already gone: report it on the next pass, not in the middle of the caller.
            self._loop.call_soon(lambda: self._on_death(group, name, pid))
            return
        except OSError as exc:
            log.debug("cannot watch pid %d: %s", pid, exc)
            return
        if parent_pid(pid) != os.getppid():
            # Not a sibling started by our supervisord: a reused pid, or we are
            # not running under the supervisord that owns the program.
            os.close(pidfd)
            log.debug("pid %d of %s:%s is not supervisord's child; not watching it", pid, *key)
            return
        self._watched[key] = (pid, pidfd)
        self._loop.add_reader(pidfd, lambda: self._died(key))

    def forget(self, group: str, name: str) -> None:
        entry = self._watched.pop((group, name), None)
        if entry is not None:
            self._loop.remove(entry[1])
            os.close(entry[1])

    def stop(self) -> None:
        for group, name in list(self._watched):
            self.forget(group, name)

    def _died(self, key: ProcessKey) -> None:
        pid = self._watched[key][0]
        self.forget(*key)
        self._on_death(key[0], key[1], pid)
