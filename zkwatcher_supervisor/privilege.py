"""Who a check runs as, what it sees, and whether a file we run commands from is safe.

supervisord usually runs as root, and so do we: every check command of the
config would run as root, with our environment (supervisord's credentials
included).  A section's ``user`` (and ``group``) names who runs it instead,
switched as supervisord's own ``user=`` does (uid, primary or given gid, and
the user's supplementary groups, as ``initgroups`` gives them); checks never
see the ``SUPERVISOR_*`` variables supervisord gave us.  As root we also
refuse a config file that anyone else could change, as sshd and sudo do for
theirs: whoever can write it runs commands as root.
"""

from __future__ import annotations

import ctypes
import grp
import os
import pwd
import shlex
import stat
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

TYPE_CHECKING = False  # typing itself is not imported at run time (half a MB)
if TYPE_CHECKING:
    from .config import Config, ConfigError, ServiceSettings

# supervisord hands these to its children; for us they are its XML-RPC address
# and credentials, which a check has no business with.
SUPERVISOR_PREFIX = "SUPERVISOR_"
PR_SET_DUMPABLE = 4  # from <linux/prctl.h>


@dataclass(frozen=True)
class CheckUser:
    """The identity a check runs with, resolved when the config loads."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, as initgroups(name, gid) sets them
    home: str
    directory: str  # where the check starts: its home if it may enter it, else /

    @property
    def identity(self) -> tuple[str, int, int]:
        """Who the check runs as — user and group — as a reload compares it.

        The user's supplementary groups and home are what the system says
        about that user today: when only they change, it is the same check,
        run with them from then on.
        """
        return (self.name, self.uid, self.gid)


def identity_of(user: CheckUser | None) -> tuple[str, int, int] | None:
    """:attr:`CheckUser.identity`, or None for a check run as the listener's user."""
    return None if user is None else user.identity


def lookup_user(text: str) -> pwd.struct_passwd:
    """A user by name or uid; ValueError if there is none."""
    try:
        return pwd.getpwuid(int(text)) if text.isdigit() else pwd.getpwnam(text)
    except (KeyError, OverflowError):
        raise ValueError(f"no such user {text!r}") from None


def lookup_group(text: str) -> int:
    """A group's gid, by name or gid; ValueError if there is none."""
    try:
        return (grp.getgrgid(int(text)) if text.isdigit() else grp.getgrnam(text)).gr_gid
    except (KeyError, OverflowError):
        raise ValueError(f"no such group {text!r}") from None


def check_user(entry: pwd.struct_passwd, gid: int | None = None) -> CheckUser:
    """The identity of a check run as ``entry``, with ``gid`` instead of its primary group."""
    gid = entry.pw_gid if gid is None else gid
    groups = tuple(os.getgrouplist(entry.pw_name, gid))
    directory = entry.pw_dir if may_enter(entry.pw_dir, entry.pw_uid, {gid, *groups}) else "/"
    return CheckUser(entry.pw_name, entry.pw_uid, gid, groups, entry.pw_dir, directory)


def may_enter(path: str, uid: int, gids: Iterable[int]) -> bool:
    """Whether ``uid`` with groups ``gids`` can change into the directory ``path``:
    search permission on it and on every directory above it."""
    if not os.path.isabs(path):
        return False
    gids = set(gids)
    current = "/"
    for part in [""] + [p for p in os.path.realpath(path).split("/") if p]:
        current = os.path.join(current, part)
        try:
            info = os.stat(current)
        except OSError:
            return False
        if not stat.S_ISDIR(info.st_mode):
            return False
        if uid == 0:
            continue
        if info.st_uid == uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in gids:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return False
    return True


def make_undumpable() -> str | None:
    """Keep processes of our own user — checks without a ``user`` among them —
    from reading our memory and initial environment (supervisord's password,
    the ZooKeeper password): /proc/<pid>/environ, /proc/<pid>/mem and ptrace
    then need CAP_SYS_PTRACE, which root has.  Also no core dump is written.
    Returns why it could not be done, or None."""
    if not sys.platform.startswith("linux"):
        return f"cannot hide the listener's memory from its own user on {sys.platform}"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        return f"prctl(PR_SET_DUMPABLE, 0): {os.strerror(ctypes.get_errno())}"
    return None


def check_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment every check starts from: ours without supervisord's variables."""
    return {key: value for key, value in environ.items()
            if not key.startswith(SUPERVISOR_PREFIX)}


def user_environment(user: CheckUser) -> dict[str, str]:
    """What ``sudo -u`` sets for the user it switches to."""
    return {"HOME": user.home, "USER": user.name, "LOGNAME": user.name}


def switch_problem(user: CheckUser, euid: int, egid: int) -> str | None:
    """Why a listener running as ``euid``/``egid`` cannot run a check as ``user``, or None."""
    if euid == 0 or (user.uid == euid and user.gid == egid):
        return None
    if user.uid == euid:
        return (f"the listener runs with gid {egid}, not root, and cannot switch to "
                f"gid {user.gid}")
    return (f"the listener runs as uid {euid}, not root, and cannot switch to user "
            f"{user.name!r}")


# Symbolic links followed in one path before giving up, as Linux does (ELOOP).
MAX_SYMLINK_HOPS = 40


def unsafe_path(path: str, info: os.stat_result | None = None, owner: int = 0) -> str | None:
    """Why someone other than root could change ``path``, or None.

    The file must be root's and not writable by group or others, and so must
    every directory the lookup of ``path`` passes through: the path is resolved
    one name at a time, as the kernel resolves it, so every directory a symlink
    sits in and every directory its target leads through counts — whoever can
    write any of them can point the path at another file.  A root-owned
    directory with the sticky bit (``/tmp``) may be writable by all, as nobody
    else can rename or delete root's entries there; a link in it must be
    root's too.  ``info`` is the file's stat, if the caller already has it.
    ``owner``: a user trusted as root is, wherever this says root (the
    listener's own user, for the files that hold its secrets).
    """
    absolute = path if os.path.isabs(path) else os.path.join(os.getcwd(), path)
    try:
        info = info or os.stat(absolute)
    except OSError as exc:
        return f"cannot stat {absolute}: {exc.strerror}"
    problem = _writable_by_others(absolute, info, directory=False, owner=owner)
    if problem:
        return problem
    return _unsafe_lookup(absolute, owner)


def _unsafe_lookup(absolute: str, owner: int = 0) -> str | None:
    """The first directory or link on the way to ``absolute`` that others could change."""
    current = "/"  # where the lookup is, symlinks resolved: every directory in it was checked
    problem = _unsafe_directory(current, owner)
    if problem:
        return problem
    pending = absolute.split("/")[::-1]  # names still to look up, next one last
    hops = 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, name)
        try:
            entry = os.lstat(candidate)
        except OSError as exc:
            return f"cannot stat {candidate}: {exc.strerror}"
        if stat.S_ISLNK(entry.st_mode):
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return f"cannot resolve {absolute}: too many levels of symbolic links"
            if entry.st_uid not in (0, owner) and os.stat(current).st_mode & stat.S_ISVTX:
                # Sticky: its owner may replace it, whoever owns the directory.
                return f"{candidate} is owned by {_user_name(entry.st_uid)}, not root"
            try:
                target = os.readlink(candidate)
            except OSError as exc:
                return f"cannot read link {candidate}: {exc.strerror}"
            if target.startswith("/"):
                current = "/"
            pending.extend(target.split("/")[::-1])
            continue
        if stat.S_ISDIR(entry.st_mode):
            problem = _writable_by_others(candidate, entry, directory=True, owner=owner)
            if problem:
                return problem
        elif pending:
            return f"cannot stat {candidate}/: not a directory"
        current = candidate
    return None


def _unsafe_directory(path: str, owner: int = 0) -> str | None:
    try:
        return _writable_by_others(path, os.stat(path), directory=True, owner=owner)
    except OSError as exc:
        return f"cannot stat {path}: {exc.strerror}"


def _writable_by_others(path: str, info: os.stat_result, directory: bool,
                        owner: int = 0) -> str | None:
    if info.st_uid not in (0, owner):
        return (f"{path} is owned by {_user_name(info.st_uid)}, not root"
                + (f" or {_user_name(owner)}" if owner else ""))
    mode = info.st_mode
    if directory and mode & stat.S_ISVTX:
        return None  # sticky and trusted: others may add files, not touch ours
    for bit, who, flag in ((stat.S_IWOTH, "others", "o-w"), (stat.S_IWGRP, "group", "g-w")):
        if mode & bit:
            return (f"{path} is writable by {who} (mode {stat.S_IMODE(mode):04o}); "
                    f"chmod {flag} {path}")
    return None


def _user_name(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def executable_of(command: str, path: str | None) -> str | None:
    """The program a check command starts (its first word, looked up on ``path``), or None."""
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    if not words:
        return None
    if "/" in words[0]:
        return os.path.abspath(words[0])
    return find_program(words[0], path)


def find_program(name: str, path: str | None) -> str | None:
    """``name`` looked up on ``path`` (os.pathsep-separated; None: our PATH, else
    os.defpath): the first executable that is not a directory, or None.  Like
    ``shutil.which`` on POSIX except that an empty entry (the current directory)
    is skipped.  Not shutil itself: it brings the bz2 and lzma modules, half a MB."""
    if "/" in name:
        return name if _executable_file(name) else None
    if path is None:
        path = os.environ.get("PATH", os.defpath)
    seen = set()
    for directory in path.split(os.pathsep):
        if not directory or directory in seen:
            continue
        seen.add(directory)
        candidate = os.path.join(directory, name)
        if _executable_file(candidate):
            return candidate
    return None


def _executable_file(path: str) -> bool:
    return os.access(path, os.F_OK | os.X_OK) and not os.path.isdir(path)


def _runs_a_process(service: ServiceSettings) -> bool:
    from .config import BuiltinCheck

    return service.cmd is not None and BuiltinCheck.parse(service.cmd) is None


def root_warnings(services: Iterable[ServiceSettings]) -> list[str]:
    """For a listener running as root: one line naming the check commands that
    run as root, and one per such command whose program others could change."""
    as_root = [service for service in services
               if _runs_a_process(service) and (service.user is None or service.user.uid == 0)]
    without_user = [service.name for service in as_root if service.user is None]
    warnings = []
    if without_user:
        warnings.append(
            f"running as root, so the checks of {_sections(without_user)} run as root too; "
            "give them a user (user = nobody, in the section or in [zkwatcher])")
    programs: dict[str, list[str]] = {}
    found: dict[tuple[str, str | None], str | None] = {}  # a thousand `cmd = true`: one lookup
    for service in as_root:
        key = (service.cmd, service.check_env.get("PATH"))
        if key not in found:
            found[key] = executable_of(service.cmd, key[1])
        if found[key] is not None:
            programs.setdefault(found[key], []).append(service.name)
    for program, names in programs.items():
        problem = unsafe_path(program)
        if problem is not None and not problem.startswith("cannot stat"):
            warnings.append(f"{_sections(names)}: the check runs {program} as root, and "
                            f"others can change it: {problem}")
    return warnings


def _sections(names: list[str]) -> str:
    return ", ".join(f"[{name}]" for name in names)


def switch_error(config: Config, euid: int, egid: int) -> ConfigError | None:
    """Whether a listener running as ``euid``/``egid`` can run every check as its
    user: the first section it cannot, as an error naming the section and key."""
    from .config import ConfigError

    for service in config.services:
        if service.user is None:
            continue
        problem = switch_problem(service.user, euid, egid)
        if problem is not None:
            key = "group" if service.user.uid == euid else "user"
            return ConfigError(config.filename, problem, service.name, key)
    return None
