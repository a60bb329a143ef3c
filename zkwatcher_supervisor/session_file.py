"""The saved ZooKeeper session: how a restarted listener knows its own nodes.

A listener that crashes and is restarted by supervisord within the session
timeout reattaches to its old session (kazoo's ``client_id``) instead of
opening a new one, so its ephemeral nodes simply stay — no flap, and no need
to delete a node held by "some other session" that may in fact be a live
zk_watcher.  The file holds the session id, its password (a credential:
mode 0600) and the nodes the session holds (for sequential serverset
members, the name ZooKeeper gave each one).

It decides what gets registered, so nobody else may be able to write it: it
lives in a directory only our user can write (``/run/zkwatcher-supervisor``
as root, else ``$XDG_RUNTIME_DIR`` or ``~/.local/state``), is written
atomically, and a file or directory that another user owns or that others may
write is refused with a warning.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import json
import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SavedSession:
    session_id: int
    password: bytes
    nodes: dict[str, str]  # registration key -> the znode that holds it


def state_directory() -> str:
    """The listener's private state directory: only our user may write in it."""
    if os.geteuid() == 0:
        return "/run/zkwatcher-supervisor"
    if os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(os.environ["XDG_RUNTIME_DIR"], "zkwatcher-supervisor")
    return os.path.expanduser("~/.local/state/zkwatcher-supervisor")


def state_path(config_filename: str, kind: str) -> str:
    """``<state directory>/<kind>-<hash of the config's real path>.json``."""
    digest = hashlib.sha256(os.path.realpath(config_filename).encode()).hexdigest()[:12]
    return os.path.join(state_directory(), f"{kind}-{digest}.json")


def default_path(config_filename: str) -> str:
    """Where the listener for ``config_filename`` keeps its session."""
    return state_path(config_filename, "session")


def trusted(info: os.stat_result) -> bool:
    """Owned by our user and writable by nobody else."""
    return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def safe_directory(directory: str) -> bool:
    """Create ``directory`` if needed (readable by all, writable by us only); False,
    with a warning, if it exists but others may write it or it is not ours."""
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        info = os.stat(directory)
    except OSError as exc:
        log.warning("session directory %s: %s; a restart will not reattach", directory, exc)
        return False
    if not trusted(info):
        log.warning("session directory %s is writable by others or not ours; not using it",
                    directory)
        return False
    return True


def claim(path: str) -> int | None:
    """Lock the session for this process; None if another listener holds it.

    Two listeners started with the same config would otherwise share one
    session and take it from each other on every reconnect.  The lock goes
    with the process, however it ends.
    """
    if not safe_directory(os.path.dirname(path)):
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


def read_private_json(path: str, what: str, parse: Callable[[Any], T]) -> T | None:
    """``parse(json in path)``, or None (with a warning naming ``what``) when the file is
    missing, not ours alone, a symlink, or not what ``parse`` accepts."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("%s %s: %s; ignoring it", what, path, exc)
        return None
    with os.fdopen(fd, "rb") as handle:
        if not trusted(os.fstat(fd)) or not trusted(os.stat(os.path.dirname(path))):
            log.warning("%s %s is writable by others or not ours; ignoring it", what, path)
            return None
        try:
            return parse(json.loads(handle.read(1 << 20)))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s %s is unreadable (%s); ignoring it", what, path, exc)
            return None


def _parse_session(saved: Any) -> SavedSession:
    nodes = saved.get("nodes", {})
    if not isinstance(nodes, dict):
        raise TypeError("nodes is not a mapping")
    return SavedSession(int(saved["session_id"]), base64.b64decode(saved["password"]),
                        {str(key): str(node) for key, node in nodes.items()})


def load(path: str) -> SavedSession | None:
    """The saved session, or None if there is none we can trust (a new session then)."""
    return read_private_json(path, "session file", _parse_session)


def save(path: str, session: SavedSession) -> None:
    """Write ``session`` atomically, readable by our user only."""
    directory = os.path.dirname(path)
    if not safe_directory(directory):
        return
    text = json.dumps({"session_id": session.session_id,
                       "password": base64.b64encode(session.password).decode(),
                       "nodes": dict(sorted(session.nodes.items()))})
    write_atomically(path, text, 0o600)


def write_atomically(path: str, text: str, mode: int) -> None:
    """Readers see the old file or the new one, never a part."""
    fd, temporary = tempfile.mkstemp(prefix=".tmp-", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
