"""Files the link to ZooKeeper depends on: the secrets (a password, a TLS key)
and the certificates we trust and present.

A secret file must belong to the user the listener runs as and be neither
readable nor writable by group or others, as ssh wants of a private key:
anyone else who could read it has our identity in ZooKeeper, and anyone who
could write it chooses it.  Nor may anyone else be able to change a directory
above it, along the path as given or where its symlinks lead: they could put
another file in its place — a symlink to any file our user keeps private,
whose text would become the password we send.  The checks are made on the
file actually opened (a symlink, as Kubernetes mounts secrets, is followed to
it).  A CA bundle or certificate may be read by anyone, but the same goes for
changing it: only our user and root may.
"""

from __future__ import annotations

import os
import pwd
import stat

from .privilege import unsafe_path

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
    problem = unsafe_path(path, info, owner=me)
    if problem is not None:
        raise ValueError(f"others could put another file in its place: {problem}")


def check_private_path(path: str) -> None:
    """:func:`check_private` for a file that someone else (OpenSSL) will read."""
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    check_private(path, info)


def check_trusted_path(path: str, what: str) -> None:
    """Raise ValueError unless ``path`` is a file we can read that only our user
    and root can change; ``what`` says what changing it would change."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{path} is not a regular file")
    problem = unsafe_path(path, info, owner=os.geteuid())
    if problem is not None:
        raise ValueError(f"others could change it, and with it {what}: {problem}")


def check_readable(path: str) -> None:
    """Raise ValueError unless we may read ``path`` (without waiting on a FIFO)."""
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None


def read_secret(path: str, private: bool = True) -> str:
    """The secret in ``path``: its text less a trailing newline.  ValueError if
    the file is not private (see :func:`check_private`; ``private=False``
    skips that, for a command that only reads ZooKeeper as whoever runs it),
    empty, too large or not UTF-8."""
    try:
        # Non-blocking, so a FIFO cannot stall us; it is refused as not regular.
        fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if private:
            check_private(path, info)
        elif not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path} is not a regular file")
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
