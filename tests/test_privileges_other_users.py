"""The listener and the commands as the users a real host has: a monitoring
agent running ``status`` as ``nobody``, a listener under supervisord's
``user=``.  Real supervisord, real ZooKeeper; other users via setpriv."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support.sections import listener_section, section
from support.users import SERVICE_USER, as_user, listener_as_service_user
from support.watches import node_exists

from zkwatcher_supervisor.testing import wait_until

pytestmark = pytest.mark.e2e

@pytest.fixture
def shared_dir():
    """A directory every user may read (pytest's tmp_path is root's alone)."""
    path = tempfile.mkdtemp(prefix="zkw-users-")
    os.chmod(path, 0o755)
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def test_status_as_nobody_for_a_root_listener_whose_config_it_cannot_read(
        write_config, supervisord, zk, base_path):
    config = write_config(section(base_path, "svc", 1, cmd="true", refresh=2, timeout=None))
    os.chmod(config, 0o600)  # holds a password, say
    supervisord(listener_section(config))
    node = f"{base_path}/svc/host1:1"
    wait_until(lambda: node_exists(zk, node), 20, what="registered")
    result = wait_until(lambda: (r := as_user("nobody", "status", "-c", str(config)))
                        .returncode == 0 and r, 10, interval=0.3, what="status ok as nobody")
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"(cannot read {config}: sections and ZooKeeper from "
                               "/run/zkwatcher-supervisor/status-"), result.stdout
    assert lines[1].startswith("listener: pid ")
    assert lines[2].startswith(f"ok   [svc] {node} registered, healthy"), result.stdout
    # Neither a readable config nor a status file: bad usage.
    missing = as_user("nobody", "status", "-c", str(config.parent / "other.cfg"))
    assert missing.returncode == 2, missing.stdout + missing.stderr
    assert "there is no status file" in missing.stderr


def test_a_listener_under_supervisords_user_keeps_its_state_in_its_own_home(
        zookeeper, supervisord, zk, base_path, shared_dir):
    """supervisord's ``user=`` leaves HOME as root's: the listener's state goes to
    its own home from the password database, and root's commands find it."""
    home = Path(pwd.getpwnam(SERVICE_USER).pw_dir)
    state = home / ".local" / "state" / "zkwatcher-supervisor"
    config = shared_dir / "zkwatcher.cfg"
    config.write_text(f"[zkwatcher]\nhosts = {zookeeper.hosts}\nsession_timeout = 10\n"
                      + section(base_path, "svc", 1, cmd="true", refresh=2, timeout=None))
    os.chmod(config, 0o644)
    server = supervisord(listener_as_service_user(config, shared_dir / "zkwatcher.log"))
    node = f"{base_path}/svc/host1:1"
    try:
        wait_until(lambda: node_exists(zk, node), 20, what="registered")
        log = shared_dir / "zkwatcher.log"
        assert "Permission denied" not in log.read_text()
        wait_until(lambda: any(state.glob("session-*.json")), 5, what="session saved")
        assert any(state.glob("status-*.json"))
        env = {**os.environ, "SUPERVISOR_SERVER_URL": f"unix://{server.workdir}/supervisor.sock"}

        def cli(*args):
            return subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", *args, "-c",
                                   str(config)], capture_output=True, text=True, timeout=60,
                                  env=env)

        status = wait_until(lambda: (r := cli("status")).returncode == 0 and r, 10,
                            interval=0.3, what="root's status finds the listener")
        assert f"ok   [svc] {node} registered, healthy" in status.stdout
        drained = cli("drain", "svc", "--for", "1h")
        assert drained.returncode == 0, drained.stdout + drained.stderr
        wait_until(lambda: not node_exists(zk, node), 5, what="drained")
        assert any(state.glob("drained-*.json"))
        assert cli("undrain", "svc").returncode == 0
        wait_until(lambda: node_exists(zk, node), 5, what="undrained")
        owner = zk.exists(node).ephemeralOwner
        handed = cli("handoff")
        assert handed.returncode == 0, handed.stdout + handed.stderr
        assert zk.exists(node).ephemeralOwner == owner
    finally:
        server.stop()
        for leftover in state.glob("*"):  # only this test runs listeners as this user
            leftover.unlink()


def test_a_status_file_forged_by_another_user_is_not_believed(write_config, base_path):
    """Anyone can name a process zkwatcher-supervisor and write a status file in
    their home; only a listener root started (root's own, or one under root's
    supervisord) is believed, so with no listener running ``status`` says so."""
    import hashlib
    import json
    import time

    config = write_config(section(base_path, "svc", 1, cmd="true", refresh=2, timeout=None))
    home = Path(pwd.getpwnam(SERVICE_USER).pw_dir)
    state = home / ".local" / "state" / "zkwatcher-supervisor"
    entry = pwd.getpwnam(SERVICE_USER)
    forger = subprocess.Popen(
        ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups",
         "/usr/bin/python3", "-c",
         "import os; os.execv('/bin/sleep', ['zkwatcher-supervisor', '60'])"])
    digest = hashlib.sha256(os.path.abspath(config).encode()).hexdigest()[:12]
    forged = state / f"status-{digest}.json"
    try:
        state.mkdir(parents=True, exist_ok=True)
        for directory in (home / ".local", home / ".local" / "state", state):
            os.chown(directory, entry.pw_uid, entry.pw_gid)
            os.chmod(directory, 0o755)
        forged.write_text(json.dumps({
            "pid": forger.pid, "updated": time.time(), "config": os.path.abspath(config),
            "zookeeper": {"connected": True, "hosts": "127.0.0.1:1"},
            "sections": {"svc": {"path": "/forged/none", "healthy": False,
                                 "registered": False, "processes": {}}}}))
        os.chown(forged, entry.pw_uid, entry.pw_gid)
        time.sleep(0.2)  # the forger has exec'd under its new name
        result = subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "status",
                                 "-c", str(config)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1, result.stdout
        assert "no status file" in result.stdout and "/forged/none" not in result.stdout
    finally:
        forger.kill()
        forger.wait()
        forged.unlink(missing_ok=True)
