"""Notice a bound program's death before supervisord reports it.

supervisord reaps its children in its poll loop and sends PROCESS_STATE_EXITED
about a second after a SIGKILL.  A pidfd becomes readable the instant the
process dies, so one thread watching the pidfds of every RUNNING bound process
lets the listener deregister within milliseconds.

Guarding against pid reuse: a pid is only watched if its parent is our own
parent (supervisord starts both us and the programs), so a recycled pid that
now belongs to an unrelated process is never taken for the program.  The
health state machine also ignores a death notice for any pid but the one it
last saw RUNNING.
"""

from __future__ import annotations

import logging
import os
import selectors
import threading
from typing import Callable

from .selectwake import Waker, proc_stat

log = logging.getLogger(__name__)

ProcessKey = tuple[str, str]  # (group, name)
DeathCallback = Callable[[str, str, int], None]

AVAILABLE = hasattr(os, "pidfd_open")


def parent_pid(pid: int) -> int:
    """The parent of ``pid`` from /proc, or -1 if it is gone."""
    fields = proc_stat(pid)
    return int(fields[1]) if fields else -1


class PidWatcher:
    """Calls ``on_death(group, name, pid)`` from its own thread when a watched pid dies."""

    def __init__(self, on_death: DeathCallback) -> None:
        self._on_death = on_death
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._requests: list[tuple[ProcessKey, int]] = []  # pid 0 = stop watching
        self._watched: dict[ProcessKey, tuple[int, int]] = {}  # key -> (pid, pidfd)
        self._waker = Waker(self._selector)
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="pidwatch", daemon=True)

    def start(self) -> None:
        if AVAILABLE:
            self._thread.start()
        else:
            log.info("os.pidfd_open is unavailable; relying on supervisord's events alone")

    def stop(self) -> None:
        self._stopping = True
        self._waker.wake()

    def watch(self, group: str, name: str, pid: int) -> None:
        """Watch ``pid`` as the RUNNING process ``group:name``; never blocks."""
        self._request((group, name), pid)

    def forget(self, group: str, name: str) -> None:
        self._request((group, name), 0)

    def _request(self, key: ProcessKey, pid: int) -> None:
        if not AVAILABLE:
            return
        with self._lock:
            self._requests.append((key, pid))
        self._waker.wake()

    def _loop(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select():
                if key.data is None:
                    self._waker.drain()
                else:
                    self._died(key.data)
            with self._lock:
                requests, self._requests = self._requests, []
            for key, pid in requests:
                self._unwatch(key)
                if pid:
                    self._watch(key, pid)

    def _watch(self, key: ProcessKey, pid: int) -> None:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._report(key, pid)  # already gone
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
        self._selector.register(pidfd, selectors.EVENT_READ, key)

    def _unwatch(self, key: ProcessKey) -> None:
        entry = self._watched.pop(key, None)
        if entry is not None:
            self._selector.unregister(entry[1])
            os.close(entry[1])

    def _died(self, key: ProcessKey) -> None:
        pid = self._watched[key][0]
        self._unwatch(key)
        self._report(key, pid)

    def _report(self, key: ProcessKey, pid: int) -> None:
        try:
            self._on_death(key[0], key[1], pid)
        except Exception:
            log.exception("handling the death of %s:%s failed", *key)
