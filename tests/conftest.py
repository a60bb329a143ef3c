"""Fixtures: real ZooKeeper and supervisord servers, and a raw protocol driver.

The harness they are made of is in ``support``."""

from __future__ import annotations

import shutil
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest
from kazoo.client import KazooClient
from support.driver import ProtocolDriver
from support.users import throwaway_user

from zkwatcher_supervisor.testing import LocalSupervisord, LocalZooKeeper


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


@pytest.fixture(scope="session")
def member_user():
    """A throwaway system user with a home of its own and a supplementary group,
    removed afterwards: what initgroups gives a check's user is seen with it."""
    with throwaway_user() as (user, _):
        yield user


@pytest.fixture
def supervisord(tmp_path):
    """Factory: start a real supervisord with the given program/listener sections
    (and a ``username`` and ``password`` its socket wants, if given)."""
    started: list[LocalSupervisord] = []

    def start(sections: str, loglevel: str = "info", username: str | None = None,
              password: str | None = None) -> LocalSupervisord:
        server = LocalSupervisord(tmp_path / f"supervisor{len(started)}",
                                  textwrap.dedent(sections), loglevel=loglevel,
                                  username=username, password=password)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


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
