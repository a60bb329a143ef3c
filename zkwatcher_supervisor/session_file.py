"""The saved ZooKeeper session: how a restarted listener knows its own nodes.

A listener that crashes and is restarted by supervisord within the session
timeout reattaches to its old session (kazoo's ``client_id``) instead of
opening a new one, so its ephemeral nodes simply stay — no flap, and no need
to delete a node held by "some other session" that may in fact be a live
zk_watcher.  The file holds the session id, its password (a credential:
mode 0600) and the nodes the session holds (for sequential members, the name
ZooKeeper gave each one).

It decides what gets registered, so it lives in the listener's private state
directory (:mod:`.statedir`).  :class:`SessionStore` writes it from a thread of
its own, so a slow or hung disk never holds up the registry's deletions.
"""

from __future__ import annotations

import base64
import fcntl
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from . import statedir
from .untrusted import Unusable

TYPE_CHECKING = False  # typing itself is not imported at run time (half a MB)
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SavedSession:
    session_id: int
    password: bytes
    nodes: dict[str, str]  # registration key -> the znode that holds it
    # Written by a version that names every section in its drain file: without
    # that file, its sections are not known to have been in rotation.
    drain_sections: bool = True


def default_path(config_filename: str) -> str:
    """Where the listener for ``config_filename`` keeps its session."""
    return statedir.state_path(config_filename, "session")


def claim(path: str) -> int | None:
    """Lock the session for this process; None if another listener holds it.

    Two listeners started with the same config would otherwise share one
    session and take it from each other on every reconnect.  The lock goes
    with the process, however it ends.
    """
    if not statedir.safe_directory(os.path.dirname(path)):
        return None
    try:
        fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except OSError as exc:  # read-only, not ours, out of fds: run without reattaching
        log.warning("session lock %s.lock: %s; a restart will not reattach", path, exc)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        log.warning("another listener is running with this config (it holds %s.lock); "
                    "not sharing its ZooKeeper session", path)
        return None
    return fd


def _locked_by_another(path: str) -> bool:
    """Whether a running listener holds the session lock of ``path``."""
    try:
        fd = os.open(path + ".lock", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


def _parse_session(saved: Any) -> SavedSession:
    if not isinstance(saved, dict):
        raise Unusable("not a mapping")
    nodes = saved.get("nodes", {})
    if not isinstance(nodes, dict):
        raise Unusable("nodes is not a mapping")
    session_id = saved["session_id"]
    # A signed 64-bit number as kazoo reads it: negative from a server whose myid
    # is 128 or more (the id's top byte).
    if isinstance(session_id, bool) or not isinstance(session_id, int) \
            or not -2**63 <= session_id < 2**63 or session_id == 0:
        raise Unusable("session_id is not a session id")
    if not isinstance(saved["password"], str):
        raise Unusable("password is not a string")
    return SavedSession(session_id, base64.b64decode(saved["password"], validate=True),
                        {str(key): str(node) for key, node in nodes.items()},
                        drain_sections=saved.get("drain_sections") is True)


def load(path: str) -> SavedSession | None:
    """The saved session, or None if there is none we can trust (a new session then)."""
    return statedir.read_private_json(path, "session file", _parse_session)


def save(path: str, session: SavedSession) -> None:
    """Write ``session`` atomically, readable by our user only; OSError if it cannot be."""
    directory = os.path.dirname(path)
    if not statedir.safe_directory(directory):
        raise OSError(f"{directory} is not a private directory")
    text = json.dumps({"session_id": session.session_id,
                       "password": base64.b64encode(session.password).decode(),
                       "nodes": dict(sorted(session.nodes.items())),
                       "drain_sections": session.drain_sections})
    statedir.write_atomically(path, text, 0o600)


class SessionStore:
    """One listener's session file: locked for the life of the process, read once,
    written in the background (the newest state wins), flushed for a hand-over.

    ``problem`` says why a successor could not reattach right now (no lock, the
    last write failed), or is None.
    """

    def __init__(self, path: str, legacy: list[str] | tuple[str, ...] = (),
                 on_fatal: Callable[[BaseException], None] = lambda exc: None) -> None:
        self.path = path
        self._legacy = list(legacy)
        self._on_fatal = on_fatal
        self._lock_fd = claim(path)
        self.problem: str | None = None
        if self._lock_fd is None:
            self.problem = f"the session file {path} cannot be used (see the warning above)"
        self._condition = threading.Condition()
        self._pending: SavedSession | None = None
        self._wanted = 0  # generations: put() counts up, the writer catches up
        self._written = 0
        self._stopped = False
        self._thread: threading.Thread | None = None

    @property
    def usable(self) -> bool:
        return self._lock_fd is not None

    def hand_over_problem(self) -> str | None:
        """Why a successor could not reattach from this file now: the last write
        failed.  (Its directory: :meth:`directory_problem`.)"""
        return self.problem

    def directory_problem(self) -> str | None:
        """Why a successor would not trust the file's directory now, or None.
        A stat: for a thread other than the loop's (an NFS mount may hang it)."""
        directory = os.path.dirname(self.path)
        try:
            private = statedir.trusted(os.stat(directory))
        except OSError as exc:
            return f"{directory}: {exc.strerror}"
        if not private:
            return f"{directory} is not private any more: a successor would not trust " \
                   "the session file"
        return None

    def load(self) -> SavedSession | None:
        """The saved session, from this version's file or one an earlier version left."""
        if not self.usable:
            return None
        saved = load(self.path)
        if saved is not None or os.path.lexists(self.path):
            self._legacy = []
            return saved
        for old in self._legacy:
            if _locked_by_another(old):
                log.warning("an earlier version's listener still holds %s; not taking its "
                            "session", old)
                continue
            saved = load(old)
            if saved is not None:
                log.info("taking over the session saved by an earlier version at %s", old)
                self._legacy = [old]  # removed once ours is written; the others are not ours
                return saved
        self._legacy = []
        return None

    def put(self, session: SavedSession) -> None:
        """Save ``session`` soon; never blocks."""
        if not self.usable:
            return
        with self._condition:
            self._pending = session
            self._wanted += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="session-writer",
                                                daemon=True)
                self._thread.start()
            self._condition.notify_all()

    def flush(self, timeout: float) -> str | None:
        """Wait until everything put so far is on disk; why it is not, or None."""
        if not self.usable:
            return self.problem
        with self._condition:
            wanted = self._wanted
            if not self._condition.wait_for(lambda: self._written >= wanted, timeout):
                return f"writing the session file {self.path} did not finish in {timeout:g}s"
        return self.problem  # the writer's verdict on that last write

    def discard(self) -> None:
        """The session is closed: nothing to reattach to.  Stops the writer."""
        with self._condition:
            self._stopped = True
            self._pending = None
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(0.2)  # a write in flight would bring the file back
        if self.usable:
            statedir.remove(self.path)

    def _run(self) -> None:
        try:
            while True:
                with self._condition:
                    self._condition.wait_for(lambda: self._pending is not None or self._stopped)
                    if self._stopped:
                        return
                    session, generation = self._pending, self._wanted
                    self._pending = None
                try:
                    save(self.path, session)
                except OSError as exc:
                    problem = f"cannot write the session file {self.path}: {exc}"
                    if problem != self.problem:
                        log.warning("%s; a restart will not reattach", problem)
                    self.problem = problem
                else:
                    if self.problem is not None:
                        log.info("session file %s written again", self.path)
                    self.problem = None
                    for old in self._legacy:
                        statedir.remove(old)
                    self._legacy = []
                with self._condition:
                    self._written = max(self._written, generation)
                    self._condition.notify_all()
        except BaseException as exc:  # crash-only: never a writer that died quietly
            log.critical("session writer failed", exc_info=True)
            self._on_fatal(exc)
