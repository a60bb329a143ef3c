"""Other sessions' nodes that announce the endpoint of a sequential node of ours.

A sequential name (ServerSet's ``member_<n>``, Nerve's ``<instance_id>_<n>``)
never collides, so while another registrant — Nerve or an Aurora executor
during a migration, a second listener started by mistake — announces the same
host and port under the same parent, both nodes exist and a reader that lists
the children sees the endpoint twice.  We cannot tell whose is right; the
registry logs it once per node found.

Looking is low-priority work for the registry's worker: each parent is listed
once for all our keys under it and its children read a batch at a time, and
the worker puts the scan aside whenever real work (a registration to change)
is waiting.  This module keeps the scans' state and decides; the worker does
the reads.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from .backoff import backoff
from .payload import announced_endpoints
from .registry_decisions import PIPELINE_DEPTH, sequence_prefix

# At most this many of a parent's other children are read, in name order: a
# parent with more (a whole fleet's ServerSet) is only partly looked at, so a
# start-up does not read tens of thousands of nodes for a warning.
MAX_SIBLINGS_READ = 5000
# After a parent's scan failed (a timeout, a lost connection): the pause
# before it is tried again, doubling with each failure in a row.
RETRY_DELAY = 5.0
MAX_RETRY_DELAY = 300.0


def endpoint_of(key: str) -> tuple[str, int] | None:
    """``(host, port)`` from a sequential registration key ``<parent>/<prefix>#<host>:<port>``;
    the port as a number ("0080" is 80, as a reader's JSON says)."""
    _, sep, endpoint = posixpath.basename(key).partition("#")
    host, colon, port = endpoint.rpartition(":")
    if not sep or not colon or not host or not port.isdigit():
        return None
    return host, int(port)


class Scan:
    """One parent's look: our keys under it, then its listing, read in batches."""

    def __init__(self, parent: str, ours: dict[str, str]) -> None:
        self.parent = parent
        self.ours = ours  # our key -> our node, for every key looked at
        self.endpoints: dict[tuple[str, int], list[str]] = {}  # -> our nodes announcing it
        for key, node in sorted(ours.items()):
            endpoint = endpoint_of(key)
            if endpoint is not None:
                self.endpoints.setdefault(endpoint, []).append(node)
        self.siblings: list[str] | None = None  # None: not listed yet
        self.total = 0  # children besides ours, before the cap
        self.position = 0

    def listed(self, children: Sequence[str]) -> None:
        nodes = set(self.ours.values())
        others = sorted(node for node in (posixpath.join(self.parent, child)
                                          for child in children) if node not in nodes)
        self.total = len(others)
        self.siblings = others[:MAX_SIBLINGS_READ]

    @property
    def capped(self) -> bool:
        return self.total > len(self.siblings or ())

    def next_batch(self) -> list[str]:
        """The next siblings to read (empty: done)."""
        return (self.siblings or [])[self.position:self.position + PIPELINE_DEPTH]

    def advance(self, count: int) -> None:
        self.position += count

    @property
    def done(self) -> bool:
        return self.siblings is not None and self.position >= len(self.siblings)

    def announced_by(self, data: bytes, owner: int, session_id: int) -> list[str]:
        """Our nodes whose endpoint a sibling's data announces (none if it is our session's)."""
        if owner == session_id or not self.endpoints:
            return []
        return [node for endpoint in announced_endpoints(data)
                for node in self.endpoints.get(endpoint, ())]


class NeighbourScans:
    """Which sequential keys are still to be looked at, the scan under way, and
    the parents waiting after a failure.  Worker thread only; no I/O."""

    def __init__(self) -> None:
        self.current: Scan | None = None
        self._checked: set[str] = set()  # keys looked at, once per process
        self._logged: set[str] = set()  # other sessions' nodes already logged
        self._failures: dict[str, int] = {}
        self._not_before: dict[str, float] = {}

    def _unchecked(self, members: dict[str, str], now: float) -> dict[str, dict[str, str]]:
        by_parent: dict[str, dict[str, str]] = {}
        for key, node in members.items():
            parent = posixpath.dirname(key)
            if (key not in self._checked and sequence_prefix(key) is not None
                    and self._not_before.get(parent, now) <= now):
                by_parent.setdefault(parent, {})[key] = node
        return by_parent

    def next_scan(self, members: dict[str, str], now: float) -> Scan | None:
        """The scan to carry on with, or a new one for the first parent with
        keys to look at (``members``: our key -> node); None: nothing to do now."""
        if self.current is None:
            by_parent = self._unchecked(members, now)
            if by_parent:
                parent = min(by_parent)
                self.current = Scan(parent, by_parent[parent])
        return self.current

    def wait(self, members: dict[str, str], now: float) -> float | None:
        """Seconds until there is scanning to do (0: now); None: nothing left."""
        if self.current is not None or self._unchecked(members, now):
            return 0.0
        waiting = [self._not_before[posixpath.dirname(key)] for key in members
                   if key not in self._checked and sequence_prefix(key) is not None
                   and posixpath.dirname(key) in self._not_before]
        return max(0.0, min(waiting) - now) if waiting else None

    def finished(self, scan: Scan) -> None:
        """The scan is complete (or the parent cannot be looked at): its keys are done."""
        self._checked |= set(scan.ours)
        self._failures.pop(scan.parent, None)
        self._not_before.pop(scan.parent, None)
        self.current = None

    def failed(self, scan: Scan, now: float) -> None:
        """The scan was cut short by the connection: begun afresh after a pause."""
        count = self._failures.get(scan.parent, 0) + 1
        self._failures[scan.parent] = count
        self._not_before[scan.parent] = now + backoff(count, RETRY_DELAY, MAX_RETRY_DELAY)
        self.current = None

    def abandon(self) -> None:
        """A new session: our nodes are other nodes now; the scan under way is dropped."""
        self.current = None

    def first_sighting(self, node: str) -> bool:
        """Whether ``node`` (another session's) is to be logged: once per node."""
        if node in self._logged:
            return False
        self._logged.add(node)
        return True
