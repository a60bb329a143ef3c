"""What a consumer of the registrations sees: nodes, and the events of their watches."""

from __future__ import annotations

import threading
import time

from kazoo.client import KazooClient


def node_exists(zk: KazooClient, path: str) -> bool:
    return zk.exists(path) is not None


class NodeWatch:
    """Every creation and deletion of one znode with its time, as a consumer's watch sees it."""

    def __init__(self, zk: KazooClient, path: str) -> None:
        self.events: list[tuple[str, float]] = []
        self._zk, self._path = zk, path
        self._cond = threading.Condition()
        zk.exists(path, watch=self._fired)

    def _fired(self, event) -> None:
        with self._cond:
            self.events.append((event.type, time.monotonic()))
            self._cond.notify_all()
        self._zk.exists(self._path, watch=self._fired)

    def times(self, kind: str, after: float = 0.0) -> list[float]:
        with self._cond:
            return [t for k, t in self.events if k == kind and t >= after]

    def deletions(self, after: float = 0.0) -> list[float]:
        return self.times("DELETED", after)

    def wait_for(self, kind: str, after: float, timeout: float) -> float | None:
        """When ``kind`` (CREATED, DELETED) first happened at or after ``after``; None if
        it has not within ``timeout`` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: self.times(kind, after), timeout)
        found = self.times(kind, after)
        return found[0] if found else None
