"""How a stretch without a ZooKeeper connection is told in the log: one line
when it starts, one a minute while it lasts, one when it ends.

Pure: times are passed in.  The registry keeps one :class:`Outage` under its
lock (kazoo's callbacks start and end it, the worker logs its progress).
"""

from __future__ import annotations

from collections import namedtuple

# While ZooKeeper is out of reach, one line says so this often.
PROGRESS_INTERVAL = 60.0


class Stretch(namedtuple("Stretch", "away expired ever_connected")):
    """An outage as it stands: how long so far (seconds), whether the session
    expired meanwhile, and whether there ever was a connection before it."""

    __slots__ = ()

    away: float
    expired: bool
    ever_connected: bool


class Outage:
    """The current stretch without a connection; until the first one, since start."""

    def __init__(self, now: float) -> None:
        self._since: float | None = now
        self._expired = False
        self._ever_connected = False
        self._next_line = now + PROGRESS_INTERVAL

    def begin(self, now: float, expired: bool = False) -> None:
        """The connection was suspended, or (``expired``) the session lost."""
        if self._since is None:
            self._since = now
            self._next_line = now + PROGRESS_INTERVAL
        if expired:
            self._expired = True

    def end(self, now: float) -> Stretch:
        """Connected: the stretch that ends (away 0 if there was none)."""
        away = now - self._since if self._since is not None else 0.0
        ended = Stretch(away, self._expired, self._ever_connected)
        self._since = None
        self._expired = False
        self._ever_connected = True
        return ended

    def wait(self, now: float) -> float | None:
        """Seconds until the next progress line is due; None while connected."""
        if self._since is None:
            return None
        return max(0.0, self._next_line - now)

    def due(self, now: float) -> Stretch | None:
        """The stretch, if a progress line is due now (the next is then a
        PROGRESS_INTERVAL later); None if not."""
        if self._since is None or now < self._next_line:
            return None
        while self._next_line <= now:
            self._next_line += PROGRESS_INTERVAL
        return Stretch(now - self._since, self._expired, self._ever_connected)


def connected_line(ended: Stretch, wanted: int, registered: int) -> str:
    """What to say when a connection is made, after ``ended``."""
    if not ended.ever_connected:
        took = f" after {ended.away:.0f} s" if ended.away >= PROGRESS_INTERVAL else ""
        return f"connected to ZooKeeper{took}"
    kept = (f"a new session: registering {wanted} node(s)" if ended.expired else
            f"the session lived: {registered} node(s) kept")
    return f"reconnected to ZooKeeper after {ended.away:.1f} s away; {kept}"


def progress_line(stretch: Stretch, wanted: int, registered: int,
                  session_timeout: float) -> str:
    """What to say a PROGRESS_INTERVAL into an outage, and each one after."""
    away = stretch.away
    if not stretch.ever_connected:
        return f"no ZooKeeper session yet after {away:.0f} s; {wanted} node(s) to register"
    if stretch.expired:
        return (f"still disconnected from ZooKeeper after {away:.0f} s; the session "
                f"expired: {wanted} node(s) to register once a server answers")
    if away < session_timeout:
        return (f"still disconnected from ZooKeeper after {away:.0f} s; "
                f"{registered} node(s) kept while the session lives "
                f"(session_timeout {session_timeout:g} s)")
    # Only a server can tell: one that is up has expired the session, a
    # restarted ensemble gives it a fresh session_timeout.
    return (f"still disconnected from ZooKeeper after {away:.0f} s; "
            f"{registered} node(s) kept if the session still lives "
            f"(a server that is up expires it {session_timeout:g} s after "
            f"it last heard from us)")
