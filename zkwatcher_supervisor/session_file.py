"""The saved ZooKeeper session: how a restarted listener knows its own nodes.

A listener that crashes and is restarted by supervisord within the session
timeout reattaches to its old session (kazoo's ``client_id``) instead of
opening a new one, so its ephemeral nodes simply stay — no flap, and no need
to delete a node held by "some other session" that may in fact be a live
zk_watcher.  The file holds the session id, its password (a credential:
mode 0600) and the paths the session holds.

It decides what gets registered, so nobody else may be able to write it: it
lives in a directory only our user can write (``/run/zkwatcher-supervisor``
as root, else ``$XDG_RUNTIME_DIR`` or ``~/.local/state``), is written
atomically, and a file or directory that another user owns or that others may
write is refused with a warning.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import stat
import tempfile
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SavedSession:
    session_id: int
    password: bytes
    paths: frozenset[str]


def default_path(config_filename: str) -> str:
    """Where the listener for ``config_filename`` keeps its session."""
    if os.geteuid() == 0:
        directory = "/run/zkwatcher-supervisor"
    elif os.environ.get("XDG_RUNTIME_DIR"):
        directory = os.path.join(os.environ["XDG_RUNTIME_DIR"], "zkwatcher-supervisor")
    else:
        directory = os.path.expanduser("~/.local/state/zkwatcher-supervisor")
    digest = hashlib.sha256(os.path.realpath(config_filename).encode()).hexdigest()[:12]
    return os.path.join(directory, f"session-{digest}.json")


def _trusted(info: os.stat_result) -> bool:
    return info.st_uid == os.geteuid() and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _safe_directory(directory: str) -> bool:
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.stat(directory)
    except OSError as exc:
        log.warning("session directory %s: %s; a restart will not reattach", directory, exc)
        return False
    if not _trusted(info):
        log.warning("session directory %s is writable by others or not ours; not using it",
                    directory)
        return False
    return True


def load(path: str) -> SavedSession | None:
    """The saved session, or None if there is none we can trust."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.warning("session file %s: %s; starting a new session", path, exc)
        return None
    with os.fdopen(fd, "rb") as handle:
        if not _trusted(os.fstat(fd)) or not _trusted(os.stat(os.path.dirname(path))):
            log.warning("session file %s is writable by others or not ours; ignoring it", path)
            return None
        try:
            saved = json.loads(handle.read(1 << 20))
            return SavedSession(int(saved["session_id"]),
                                base64.b64decode(saved["password"]),
                                frozenset(saved.get("paths", [])))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("session file %s is unreadable (%s); starting a new session", path, exc)
            return None


def save(path: str, session: SavedSession) -> None:
    """Write ``session`` atomically, readable by our user only."""
    directory = os.path.dirname(path)
    if not _safe_directory(directory):
        return
    text = json.dumps({"session_id": session.session_id,
                       "password": base64.b64encode(session.password).decode(),
                       "paths": sorted(session.paths)})
    fd, temporary = tempfile.mkstemp(prefix=".session-", dir=directory)  # mode 0600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
