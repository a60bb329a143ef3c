"""What the registry does about one registration: decisions without I/O.

A *registration key* names what is to be registered: a znode path, or for a
sequential node (a ServerSet member, a Nerve instance) the pseudo-path
``<parent>/<prefix>#<anything>``, which stands for the one ephemeral
sequential znode ``<parent>/<prefix><10 digits>`` that ZooKeeper names when
we create it.  A *node* is always a real znode path.

None of it talks to ZooKeeper, sleeps or reads a clock.  The two small
stateful helpers (MemberNodes, RetrySchedule) belong to a Registry, which
says which of its threads touch them.
"""

from __future__ import annotations

import posixpath
from collections import namedtuple
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass

from kazoo.security import ACL, Permissions

from .backoff import backoff
from .payload import same_registration

TYPE_CHECKING = False  # typing itself is not imported at run time (half a MB)
if TYPE_CHECKING:
    from typing import TypeVar, Union

    from kazoo.protocol.states import ZnodeStat

    R = TypeVar("R")
    S = TypeVar("S")
    T = TypeVar("T")

# A key whose last element holds this mark stands for a sequential member.
SEQUENCE_MARK = "#"
# ZooKeeper appends a sequence number of this many digits to a member's prefix.
SEQUENCE_DIGITS = 10
# Requests pipelined before waiting for their replies.  Every request in
# flight holds a kazoo AsyncResult (a Condition and its lock); sending a
# thousand at once makes a start-up peak the process keeps as heap for good.
# A round trip is about a millisecond here, so batches cost start-up little.
PIPELINE_DEPTH = 64
# Upper bound on waiting for one pipelined batch of replies.
REPLY_TIMEOUT = 10.0
# Pause before retrying keys whose last attempt failed for a reason other
# than a lost connection (a reconnect wakes the worker by itself); it doubles
# with each failure in a row, up to MAX_RETRY_DELAY, so a permanent refusal
# (NoAuth) costs ZooKeeper one request per key every half minute.
RETRY_DELAY = 0.5
MAX_RETRY_DELAY = 30.0

def sequence_prefix(key: str) -> str | None:
    """The znode prefix for a sequential member's key, or None for a key that is a node."""
    parent, name = posixpath.split(key)
    if SEQUENCE_MARK not in name:
        return None
    return posixpath.join(parent, name.split(SEQUENCE_MARK, 1)[0])


def batches(items: Sequence[T], size: int = PIPELINE_DEPTH) -> Iterator[Sequence[T]]:
    """``items`` in consecutive runs of at most ``size``: what is pipelined at once."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def pipelined(items: Sequence[T], send: Callable[[Sequence[T]], S],
              collect: Callable[[S], R]) -> Iterator[R]:
    """``send`` the items a batch at a time and ``collect`` each batch's replies,
    the next batch going out before the previous one is collected: ZooKeeper
    and kazoo's thread always have work, and at most two batches are in flight
    (memory stays bounded).  Yields what ``collect`` returns, batch by batch."""
    in_flight: list[S] = []
    for batch in batches(items):
        in_flight.append(send(batch))
        if len(in_flight) == 2:
            yield collect(in_flight.pop(0))
    for sent in in_flight:
        yield collect(sent)


@dataclass(frozen=True)
class Owned:
    """A node our session holds for a key, as we last wrote or read it."""

    data: bytes | None  # None: held by a session we reattached to; contents unknown
    version: int


# What to send to ZooKeeper for a key.  Classes, not tuples: a Create and a
# CreateParent with the same data are different requests.

@dataclass(frozen=True)
class Create:
    """Create the ephemeral node (a sequential one for a member's key)."""

    data: bytes
    verb = "create"  # not a field: no annotation


@dataclass(frozen=True)
class CreateParent:
    """Create the node's parent, then the node: its create found no parent."""

    data: bytes
    verb = "create"  # not a field: no annotation


@dataclass(frozen=True)
class SetData:
    """Write the node's data, if it is still at ``version``."""

    data: bytes
    version: int
    verb = "set"  # not a field: no annotation


@dataclass(frozen=True)
class Delete:
    """Delete the node, if it is still at ``version``."""

    version: int
    verb = "delete"  # not a field: no annotation


if TYPE_CHECKING:
    Action = Union[Create, CreateParent, SetData, Delete]


class Decision(namedtuple("Decision", "action forget adopt held_by",
                          defaults=(None, False, None, None))):
    """The action for a key (an Action or None), and what to change in what we
    know of it: ``forget``, we do not (or no longer) hold a node for the key;
    ``adopt``, we hold this node (an Owned), as it is, for the key's data;
    ``held_by``, the wanted node is another session's (0: persistent)."""

    __slots__ = ()

    action: Action | None
    forget: bool
    adopt: Owned | None
    held_by: int | None


def decide_from_memory(owned: Owned | None, data: bytes | None) -> Action | None:
    """What to do for a key whose wanted data changed (None: no longer wanted),
    from what this session wrote: no read needed."""
    if data is None:
        return Delete(owned.version) if owned else None
    if owned is None:
        return Create(data)
    return SetData(data, owned.version) if owned.data != data else None


def decide_from_stat(key: str, data: bytes | None, stat: ZnodeStat | None, session_id: int,
                     owned: Owned | None, current: bytes | None = None,
                     holding: bool = False) -> Decision:
    """What to do for a key given what ZooKeeper says its node is now.

    ``data``: what we want there (None: nothing); ``stat``: the node's, None if
    there is none; ``owned``: what we knew of it; ``current``: its data, read
    for nodes of a reattached session; ``holding``: the listener has not yet
    worked out its health after a restart, so reattached nodes stay.
    """
    if stat is None:
        return Decision(Create(data) if data is not None else None, forget=True)
    ours = stat.ephemeralOwner == session_id
    if not ours and sequence_prefix(key) is not None:
        # The member we knew is not ours (any more): register a new one.
        return Decision(Create(data) if data is not None else None, forget=True)
    if not ours:
        # Not ours, so never written nor deleted; the exists watch set by the
        # lookup tells us when it goes.
        return Decision(forget=True, held_by=stat.ephemeralOwner if data is not None else None)
    if (data is not None and owned is not None and owned.data is None
            and current is not None and same_registration(current, data)):
        # Our previous incarnation wrote the same thing but for its pid and
        # start time: leave it, so consumers see no change at all.
        return Decision(adopt=Owned(data, stat.version))
    if data is None:
        if holding and owned is not None and owned.data is None:
            return Decision()  # a reattached node: wait until we know our health
        return Decision(Delete(stat.version))
    if owned is None or owned.data != data or owned.version != stat.version:
        return Decision(SetData(data, stat.version))
    return Decision()


class MemberNodes:
    """The node ZooKeeper named for each sequential member's key, and back."""

    def __init__(self, nodes: dict[str, str] | None = None) -> None:
        self._nodes: dict[str, str] = {}  # key -> node
        self._keys: dict[str, str] = {}  # node -> key
        for key, node in (nodes or {}).items():
            if sequence_prefix(key) is not None:
                self.add(key, node)

    def node(self, key: str) -> str | None:
        """The node holding ``key``; None for a member not created (or not known) yet."""
        return self._nodes.get(key) if sequence_prefix(key) is not None else key

    def key(self, node: str) -> str:
        """The key ``node`` stands for (a node that is no member's is its own key)."""
        return self._keys.get(node, node)

    def has_node(self, key: str) -> bool:
        """Whether ZooKeeper has named (as far as we know) the node of member ``key``."""
        return key in self._nodes

    def is_member_node(self, node: str) -> bool:
        """Whether ``node`` is the node of one of our members' keys."""
        return node in self._keys

    def add(self, key: str, node: str) -> None:
        self._nodes[key], self._keys[node] = node, key

    def forget(self, key: str) -> None:
        node = self._nodes.pop(key, None)
        if node is not None:
            self._keys.pop(node, None)

    def as_dict(self) -> dict[str, str]:
        """A copy: key -> node."""
        return dict(self._nodes)


class RetrySchedule:
    """Keys whose last attempt failed: how many times in a row, and when to try next."""

    def __init__(self, base: float = RETRY_DELAY, cap: float = MAX_RETRY_DELAY) -> None:
        self.base = base
        self.cap = cap
        self._failures: dict[str, int] = {}
        self._at: dict[str, float] = {}

    def record(self, failed: Iterable[str], succeeded: Iterable[str], now: float) -> None:
        """After a pass: ``succeeded`` start afresh, ``failed`` wait longer each time."""
        for key in succeeded:
            self._failures.pop(key, None)
        for key in failed:
            count = self._failures.get(key, 0) + 1
            self._failures[key] = count
            at = now + backoff(count, self.base, self.cap)
            self._at[key] = min(self._at.get(key, at), at)

    def reset(self, key: str) -> None:
        """A new wish for ``key``: its next failure waits the shortest pause again."""
        self._failures.pop(key, None)

    def clear(self) -> None:
        """A new connection: everything is tried at once."""
        self._failures.clear()
        self._at.clear()

    def take_due(self, now: float) -> set[str]:
        """The keys whose time has come; they leave the schedule."""
        due = {key for key, at in self._at.items() if at <= now}
        for key in due:
            del self._at[key]
        return due

    def next_at(self) -> float | None:
        """When the earliest retry is due; None with nothing to retry."""
        return min(self._at.values()) if self._at else None


def lost_create_candidates(children: Iterable[str], prefixes: Collection[str],
                           floor: int) -> list[str]:
    """Which of a parent's ``children`` a sequential create of ours with one of
    ``prefixes`` (base names) can have made, if the parent's cversion was
    ``floor`` just before: ZooKeeper numbers a new member with the cversion."""
    found = []
    for child in children:
        base = child.rstrip("0123456789")
        digits = child[len(base):]
        if base in prefixes and len(digits) == SEQUENCE_DIGITS and int(digits) >= floor:
            found.append(child)
    return found


def match_lost_creates(attempted: dict[str, bytes], found: list[tuple[str, bytes, S]]
                       ) -> tuple[dict[str, tuple[str, bytes, S]], list[tuple[str, bytes, S]]]:
    """Pair each key whose create's reply was lost (``attempted``: key -> the
    data it sent) with a member of ours among ``found`` ((node, data, stat))
    that registers the same thing, each member at most once.  Returns the
    pairs and the members left over: duplicates, if no key claims them."""
    left = list(found)
    matched = {}
    for key, data in attempted.items():
        match = next((entry for entry in left if same_registration(entry[1], data)), None)
        if match is not None:
            left.remove(match)
            matched[key] = match
    return matched, left


def open_parent_risks(acls: Iterable[ACL]) -> list[tuple[str, str]]:
    """What a parent's ACL lets anyone do to our nodes in it: (permission, risk)."""
    granted = 0
    for acl in acls:
        if (acl.id.scheme, acl.id.id) == ("world", "anyone"):
            granted |= acl.perms
    return [(name, risk) for name, bit, risk in (
        ("DELETE", Permissions.DELETE, "delete our nodes"),
        ("CREATE", Permissions.CREATE, "create a node at our path before we do"))
        if granted & bit]
