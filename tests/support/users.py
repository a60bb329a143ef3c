"""Other users of the host: throwaway system users, code they can run, commands as them."""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

from zkwatcher_supervisor.privilege import CheckUser


@contextlib.contextmanager
def throwaway_user(extra_groups: int = 0) -> Iterator[tuple[CheckUser, list[str]]]:
    """A system user with a home of its own and a supplementary group, removed
    afterwards, and ``extra_groups`` more groups it is not in yet (their names)."""
    from zkwatcher_supervisor.privilege import check_user

    suffix = uuid.uuid4().hex[:8]
    name, group = f"zkwt-{suffix}", f"zkwt-g-{suffix}"
    spare = [f"zkwt-x{index}-{suffix}" for index in range(extra_groups)]
    home = Path(tempfile.mkdtemp(prefix="zkwatcher-home-"))
    try:
        for each in (group, *spare):
            subprocess.run(["groupadd", "--system", each], check=True)
        subprocess.run(["useradd", "--system", "--user-group", "--groups", group,
                        "--home-dir", str(home), "--no-create-home",
                        "--shell", "/usr/sbin/nologin", name], check=True)
        try:
            entry = pwd.getpwnam(name)
            os.chown(home, entry.pw_uid, entry.pw_gid)
            home.chmod(0o700)
            yield check_user(entry), spare
        finally:
            subprocess.run(["userdel", name], check=True)
    finally:
        for each in (group, *spare):  # userdel may have taken the user's own already
            subprocess.run(["groupdel", each], check=False, stderr=subprocess.DEVNULL)
        shutil.rmtree(home, ignore_errors=True)


REPO = Path(__file__).resolve().parent.parent.parent
_CODE_FOR_OTHERS: list[tuple[str, str]] = []


def code_for_others() -> tuple[str, str]:
    """An interpreter any user may run, and the PYTHONPATH that gives it this
    checkout and the packages it needs.

    The checkout, its virtualenv or the Python it was made from may sit in a
    directory only root may enter (pyenv under /root, a clone in /root): then
    the package and the virtualenv's site-packages are copied, once per test
    session, to a directory everyone may read.
    """
    if _CODE_FOR_OTHERS:
        return _CODE_FOR_OTHERS[0]
    pythons = list(dict.fromkeys([os.path.realpath(sys.executable), "/usr/bin/python3"]))
    nobody = pwd.getpwnam("nobody")

    def works(python: str, pythonpath: str) -> bool:
        try:
            return subprocess.run(
                [python, "-c", "import zkwatcher_supervisor.listener, kazoo, supervisor"],
                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": pythonpath}, cwd="/",
                user=nobody.pw_uid, group=nobody.pw_gid, extra_groups=[],
                capture_output=True, timeout=60).returncode == 0
        except PermissionError:
            return False

    import site

    here = os.pathsep.join([str(REPO), *site.getsitepackages()])
    found = next(((python, here) for python in pythons if works(python, here)), None)
    if found is None:
        copy = Path(tempfile.mkdtemp(prefix="zkw-code-for-others-"))
        atexit.register(shutil.rmtree, copy, True)
        skip = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(REPO / "zkwatcher_supervisor", copy / "zkwatcher_supervisor",
                        ignore=skip)
        for packages in site.getsitepackages():
            shutil.copytree(packages, copy / "site-packages", ignore=skip, symlinks=True,
                            dirs_exist_ok=True)
        for directory, _, files in os.walk(copy):
            os.chmod(directory, 0o755)
            for name in files:
                path = os.path.join(directory, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o644)
        there = os.pathsep.join([str(copy), str(copy / "site-packages")])
        found = next(((python, there) for python in pythons if works(python, there)), None)
    assert found, f"no Python interpreter other users can run our code with (tried {pythons})"
    _CODE_FOR_OTHERS.append(found)
    return found


# A system user with a home of its own: Debian's zookeeper package makes one.
SERVICE_USER = "zookeeper"


def python_for_others() -> tuple[str, dict[str, str]]:
    """An interpreter another user can run this checkout with, and its environment."""
    python, pythonpath = code_for_others()
    return python, {"PYTHONPATH": pythonpath}


def as_user(user: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    python, extra = python_for_others()
    entry = pwd.getpwnam(user)
    return subprocess.run(
        ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups",
         python, "-m", "zkwatcher_supervisor", *args],
        capture_output=True, text=True, timeout=60, cwd="/",
        env={"PATH": "/usr/bin:/bin", **extra, **(env or {})})


def listener_as_service_user(config: Path, log: Path) -> str:
    """An eventlistener section that runs the listener as SERVICE_USER, as
    supervisord's ``user =`` does (HOME stays root's)."""
    python, extra = python_for_others()
    environment = ",".join(f'{key}="{value}"' for key, value in extra.items())
    return textwrap.dedent(f"""
        [eventlistener:zkwatcher]
        command = {python} -m zkwatcher_supervisor -c {config}
        events = PROCESS_STATE,TICK_5,REMOTE_COMMUNICATION
        buffer_size = 1024
        startsecs = 0
        user = {SERVICE_USER}
        directory = /
        stderr_logfile = {log}
        """) + (f"environment = {environment}\n" if environment else "")
