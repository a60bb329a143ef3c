"""Files that hold the listener's secrets: a password, a TLS key.

Such a file must belong to the user the listener runs as and be neither
readable nor writable by group or others, as ssh wants of a private key:
anyone else who could read it has our identity in ZooKeeper, and anyone who
could write it chooses it.  The checks are made on the file actually opened
(a symlink, as Kubernetes mounts secrets, is followed to it).
"""

from __future__ import annotations

import os
import pwd
import stat

MAX_SECRET_BYTES = 64 * 1024


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def check_private(path: str, info: os.stat_result) -> None:
    """Raise ValueError, saying what to fix, unless ``info`` (of ``path``) is a
    regular file private to our user."""
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path} is not a regular file")
    me = os.geteuid()
    if info.st_uid != me:
        raise ValueError(f"{path} belongs to {_user(info.st_uid)}, not to {_user(me)} (the "
                         f"user the listener runs as); chown {_user(me)} {path}")
    if info.st_mode & (stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH):
        raise ValueError(f"{path} is readable or writable by group or others (mode "
                         f"{stat.S_IMODE(info.st_mode):04o}); chmod go-rw {path}")


def check_private_path(path: str) -> None:
    """:func:`check_private` for a file that someone else (OpenSSL) will read."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    check_private(path, info)


def read_secret(path: str) -> str:
    """The secret in ``path``: its text less a trailing newline.  ValueError if
    the file is not private, empty, too large or not UTF-8."""
    try:
        # Non-blocking, so a FIFO cannot stall us; it is refused as not regular.
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        check_private(path, os.fstat(fd))
        raw = handle.read(MAX_SECRET_BYTES + 1)
    if len(raw) > MAX_SECRET_BYTES:
        raise ValueError(f"{path} is larger than {MAX_SECRET_BYTES // 1024} KiB; not a secret")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if text.endswith("\n"):
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    if not text:
        raise ValueError(f"{path} is empty")
    return text
