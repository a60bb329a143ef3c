"""Where the listener keeps its state, and which of those files may be believed.

Three files belong to each listener, named after its config file's absolute
path *as given* (a symlink swapped under it changes nothing), so the listener
and every command — whoever runs them — agree on them:

* ``status-<id>.json`` — what ``status``, ``drain`` and ``handoff`` read; any
  user may read it;
* ``session-<id>.json`` — the ZooKeeper session to reattach to (a credential,
  mode 0600); no session survives a reboot, so it lives under ``/run``;
* ``drained-<id>.json`` — the operator's drains, which must survive a reboot,
  so they live under ``/var/lib``.

As root: ``/run/zkwatcher-supervisor`` and ``/var/lib/zkwatcher-supervisor``.
Another user (a listener under supervisord's ``user=``): the
``.local/state/zkwatcher-supervisor`` directory in that user's home from the
password database — not ``$HOME``, which supervisord leaves as root's.

These files decide what gets registered, so nobody else may be able to write
them: a directory or file that another user owns or may write is refused, and
files are opened without following links and read bounded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pwd
import stat
from collections.abc import Callable, Iterable

from .untrusted import Unusable, load_json

TYPE_CHECKING = False  # typing itself is not imported at run time (half a MB)
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")


log = logging.getLogger(__name__)

RUNTIME_DIRECTORY = "/run/zkwatcher-supervisor"
PERSISTENT_DIRECTORY = "/var/lib/zkwatcher-supervisor"
USER_DIRECTORY = os.path.join(".local", "state", "zkwatcher-supervisor")
PERSISTENT_KINDS = ("drained",)
MAX_STATE_BYTES = 1 << 20


def config_key(config_filename: str) -> str:
    """The config's identity: its absolute path as given, symlinks not followed."""
    return os.path.abspath(config_filename)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def home_directory(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_dir or None
    except KeyError:
        return None


def directory_for(kind: str, uid: int | None = None) -> str | None:
    """The directory that holds ``kind`` files of a listener running as ``uid``."""
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        return PERSISTENT_DIRECTORY if kind in PERSISTENT_KINDS else RUNTIME_DIRECTORY
    home = home_directory(uid)
    return os.path.join(home, USER_DIRECTORY) if home else None


def state_path(config_filename: str, kind: str, uid: int | None = None) -> str:
    """``<directory>/<kind>-<hash of the config's absolute path>.json``."""
    directory = directory_for(kind, uid)
    if directory is None:  # no home: a path that cannot exist, refused with a warning
        directory = os.path.join("/nonexistent", str(os.geteuid() if uid is None else uid))
    return os.path.join(directory, f"{kind}-{_digest(config_key(config_filename))}.json")


def legacy_paths(config_filename: str, kind: str) -> list[str]:
    """Where earlier versions kept ``kind`` for this config, newest scheme first.

    They named files after the config's resolved path and chose the directory
    from the caller's environment; the first start of this version picks the
    files up from there, so the hand-over that installs it does not flap.
    """
    names = {f"{kind}-{_digest(os.path.realpath(config_filename))}.json",
             f"{kind}-{_digest(config_key(config_filename))}.json"}
    if os.geteuid() == 0:
        directories = [RUNTIME_DIRECTORY]
    else:
        directories = [os.path.join(os.environ["XDG_RUNTIME_DIR"], "zkwatcher-supervisor")
                       if os.environ.get("XDG_RUNTIME_DIR") else None,
                       os.path.expanduser(os.path.join("~", USER_DIRECTORY))]
    current = state_path(config_filename, kind)
    directories.append(os.path.dirname(current))
    paths = []
    for directory in directories:
        if directory and not os.access(directory, os.X_OK):
            continue  # $HOME left as root's by supervisord's user=: nothing of ours there
        for name in sorted(names):
            path = os.path.join(directory, name) if directory else None
            if path and path != current and path not in paths:
                paths.append(path)
    return paths


def trusted(info: os.stat_result, uid: int | None = None) -> bool:
    """Owned by ``uid`` (default: us) and writable by nobody else."""
    owner = os.geteuid() if uid is None else uid
    return info.st_uid == owner and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def safe_directory(directory: str) -> bool:
    """Create ``directory`` if needed (readable by all, writable by us only); False,
    with a warning, if it exists but others may write it or it is not ours."""
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        info = os.stat(directory)
    except OSError as exc:
        log.warning("state directory %s: %s", directory, exc)
        return False
    if not trusted(info):
        log.warning("state directory %s is writable by others or not ours; not using it",
                    directory)
        return False
    return True


def read_private_json(path: str, what: str, parse: Callable[[Any], T],
                      owner: int | None = None, quiet: bool = False) -> T | None:
    """``parse(json in path)``, or None (with a warning naming ``what``) when the file is
    missing, not ``owner``'s alone (default: ours), a symlink, too big, or not what
    ``parse`` accepts.  ``parse`` raises ValueError (or KeyError/TypeError) to refuse."""
    def refuse(message: str, *args) -> None:
        if not quiet:
            log.warning("%s %s: " + message + "; ignoring it", what, path, *args)

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return refuse("%s", exc.strerror)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        try:
            directory = os.stat(os.path.dirname(path) or ".")
        except OSError as exc:
            return refuse("%s", exc.strerror)
        if not stat.S_ISREG(info.st_mode):
            return refuse("not a regular file")
        if not trusted(info, owner) or not trusted(directory, owner):
            return refuse("writable by others or not owned by its listener's user")
        try:
            return parse(load_json(handle.read(MAX_STATE_BYTES + 1), MAX_STATE_BYTES))
        except OSError as exc:
            return refuse("%s", exc.strerror)
        except (Unusable, ValueError, KeyError, TypeError, AttributeError,
                OverflowError) as exc:
            return refuse("unreadable (%s)", str(exc)[:200])


def write_atomically(path: str, text: str | Iterable[str], mode: int,
                     durable: bool = True) -> None:
    """Write ``text`` (a string, or the pieces of one) to ``path`` with ``mode``:
    readers see the old file or the new one, never a part.  ``durable`` also syncs
    the file and the rename to disk, so a crash right after leaves the new file,
    not an empty one.  An exception raised while the pieces are made leaves the
    old file as it was."""
    directory = os.path.dirname(path) or "."
    fd, temporary = _temporary_file(directory)
    try:
        with os.fdopen(fd, "w") as out:
            if isinstance(text, str):
                out.write(text)
            else:
                out.writelines(text)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise
    if not durable:
        return
    try:
        directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def _temporary_file(directory: str) -> tuple[int, str]:
    """A new file only we can read, for :func:`write_atomically` (what
    ``tempfile.mkstemp`` does, without the half MB that tempfile and shutil
    bring along)."""
    while True:
        path = os.path.join(directory, f".tmp-{os.urandom(6).hex()}")
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path
        except FileExistsError:
            continue


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
