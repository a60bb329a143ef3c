"""Fixtures: real ZooKeeper and supervisord servers, and a raw protocol driver."""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kazoo.client import KazooClient

from zkwatcher_supervisor.privilege import CheckUser
from zkwatcher_supervisor.testing import LocalSupervisord, LocalZooKeeper, wait_until

LISTENER = f"{sys.executable} -m zkwatcher_supervisor"


@pytest.fixture(scope="session")
def zookeeper(tmp_path_factory):
    server = LocalZooKeeper(tmp_path_factory.mktemp("zookeeper")).start()
    yield server
    server.stop()


@pytest.fixture
def zk(zookeeper):
    """A separate client, as a consumer of the registrations would have."""
    client = KazooClient(hosts=zookeeper.hosts, timeout=5)
    client.start(timeout=30)
    yield client
    client.stop()
    client.close()


@pytest.fixture
def base_path():
    return f"/test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def write_config(tmp_path, zookeeper):
    """Write a listener config pointing at the test ZooKeeper; returns its path."""

    def write(body: str, name: str = "zkwatcher.cfg", hosts: str | None = None,
              session_timeout: float = 4, settings: str = "") -> Path:
        """``settings``: more ``key = value`` lines for the [zkwatcher] section."""
        path = tmp_path / name
        header = (f"[zkwatcher]\nhosts = {hosts or zookeeper.hosts}\n"
                  f"session_timeout = {session_timeout}\n{textwrap.dedent(settings)}\n")
        path.write_text(header + textwrap.dedent(body))
        return path

    return write


@pytest.fixture
def reachable_dir():
    """A directory other users can reach (pytest's tmp_path is under a 0700 one):
    for files that checks running as another user read or write."""
    path = Path(tempfile.mkdtemp(prefix="zkwatcher-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


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


@pytest.fixture(scope="session")
def member_user():
    """A throwaway system user with a home of its own and a supplementary group,
    removed afterwards: what initgroups gives a check's user is seen with it."""
    with throwaway_user() as (user, _):
        yield user


@pytest.fixture
def supervisord(tmp_path):
    """Factory: start a real supervisord with the given program/listener sections."""
    started: list[LocalSupervisord] = []

    def start(sections: str, loglevel: str = "info") -> LocalSupervisord:
        server = LocalSupervisord(tmp_path / f"supervisor{len(started)}",
                                  textwrap.dedent(sections), loglevel=loglevel)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def listener_section(config: Path, events: str = "PROCESS_STATE,TICK_5,REMOTE_COMMUNICATION",
                     extra: str = "") -> str:
    return textwrap.dedent(f"""
        [eventlistener:zkwatcher]
        command = {LISTENER} -c {config}
        events = {events}
        buffer_size = 1024
        startsecs = 0
        stopwaitsecs = 5
        stderr_logfile = {config.parent}/zkwatcher.log
        """) + extra


def node_exists(zk: KazooClient, path: str) -> bool:
    return zk.exists(path) is not None


class ProtocolDriver:
    """Plays supervisord's side of the listener protocol over pipes, byte for byte."""

    def __init__(self, config: Path, env: dict | None = None, args: tuple = (),
                 command: tuple = (sys.executable, "-m", "zkwatcher_supervisor"),
                 stderr_pipe: bool = False) -> None:
        """``stderr_pipe``: the listener's stderr is a pipe (``process.stderr``)
        that the test reads, or leaves unread, itself; else a file (:meth:`stderr`)."""
        self.stderr_path = config.parent / "listener.stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [*command, "-c", str(config), *args],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE if stderr_pipe else stderr,
                env={**os.environ, **(env or {})},
            )
        self.stdout = b""  # read from the listener's stdout, not yet matched
        self.transcript: list[bytes] = []  # protocol tokens matched so far
        self.serial = 0

    def _expect(self, token: bytes, timeout: float) -> None:
        """Read until ``token`` arrives; it must be the very next thing on stdout."""
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while len(self.stdout) < len(token):
            assert token.startswith(self.stdout), f"stray bytes on stdout: {self.stdout!r}"
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError(f"no {token!r} on stdout within {timeout}s: {self.stdout!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError(f"listener closed stdout: {self.stdout!r}")
            self.stdout += chunk
        assert self.stdout.startswith(token), f"stray bytes on stdout: {self.stdout!r}"
        self.stdout = self.stdout[len(token):]
        self.transcript.append(token)

    def wait_ready(self, timeout: float = 10.0) -> None:
        self._expect(b"READY\n", timeout)

    def send(self, eventname: str, payload: str, timeout: float = 5.0) -> float:
        """Send one event and return the seconds until its RESULT came back."""
        if self.transcript[-1] != b"READY\n":
            self.wait_ready(timeout)
        self.serial += 1
        body = payload.encode()
        header = (f"ver:3.0 server:supervisor serial:{self.serial} pool:zkwatcher "
                  f"poolserial:{self.serial} eventname:{eventname} len:{len(body)}\n").encode()
        started = time.monotonic()
        self.process.stdin.write(header + body)
        self.process.stdin.flush()
        self._expect(b"RESULT 2\nOK", timeout)
        return time.monotonic() - started

    def tick(self) -> float:
        return self.send("TICK_5", f"when:{int(time.time())}")

    def close_stdin(self) -> None:
        self.process.stdin.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def driver():
    drivers: list[ProtocolDriver] = []

    def start(config: Path, env: dict | None = None, args: tuple = (),
              **options) -> ProtocolDriver:
        d = ProtocolDriver(config, env, args, **options)
        drivers.append(d)
        d.wait_ready()
        return d

    yield start
    for d in drivers:
        d.stop()


__all__ = ["listener_section", "node_exists", "throwaway_user", "wait_until"]


REPO = Path(__file__).resolve().parent.parent
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
