"""Debian's supervisor package (``apt-get install supervisor``) with our example
files in place: its own supervisorctl keeps working, and the virtualenv's
supervisorctl with examples/debian/zkwatcherctl.conf drains.

Debian's supervisord.conf is used as the package installs it, its paths (socket,
pid file, logs, conf.d) moved to the test's directory; supervisord and
supervisorctl are the package's, run by the system Python.
"""

from __future__ import annotations

import grp
import subprocess
import textwrap
import threading
from pathlib import Path

import pytest
from support.debian import DEBIAN_SUPERVISORCTL, SYSTEM_ENV, VENV_BIN, debian_supervisord
from support.users import code_for_others, throwaway_user
from support.watches import node_exists

from zkwatcher_supervisor.testing import wait_until

pytestmark = pytest.mark.e2e


def run(*command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=SYSTEM_ENV, cwd="/")


def listener_config(directory: Path, zookeeper, base_path: str) -> Path:
    config = directory / "zkwatcher.cfg"
    config.write_text(textwrap.dedent(f"""
        [zkwatcher]
        hosts = {zookeeper.hosts}
        session_timeout = 10

        [web]
        program = web
        service_port = 1
        service_hostname = host1
        zookeeper_path = {base_path}/web
        """))
    config.chmod(0o644)
    return config


@pytest.fixture
def debian(tmp_path, zookeeper, zk, base_path):
    node = f"{base_path}/web/host1:1"
    with debian_supervisord(tmp_path, listener_config(tmp_path, zookeeper, base_path),
                            zk, node) as (conf, ctl_conf):
        yield conf, ctl_conf, node


def test_debians_supervisorctl_still_works_with_our_example_files(debian, zk, tmp_path):
    conf, ctl_conf, node = debian
    def states() -> dict[str, str]:
        status = run(DEBIAN_SUPERVISORCTL, "-c", str(conf), "status")
        assert status.returncode in (0, 3), status.stdout + status.stderr  # 3: not all up yet
        return dict(line.split()[:2] for line in status.stdout.splitlines())

    wait_until(lambda: states() == {"web": "RUNNING", "zkwatcher": "RUNNING"}, 10,
               interval=0.2, what="both RUNNING in Debian's supervisorctl status")
    assert run(DEBIAN_SUPERVISORCTL, "-c", str(conf), "status").returncode == 0

    # The virtualenv's supervisorctl, with the plugin's file of its own, drains.
    gone = threading.Event()
    zk.exists(node, watch=lambda event: gone.set())
    plugin = str(VENV_BIN / "supervisorctl")
    result = run(plugin, "-c", str(ctl_conf), "drain", "web")
    assert result.returncode == 0, result.stdout + result.stderr
    assert gone.wait(5), "no deletion seen"
    assert run(plugin, "-c", str(ctl_conf), "status", "web").returncode == 0  # its own too
    result = run(plugin, "-c", str(ctl_conf), "undrain", "web")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: node_exists(zk, node), 5, what="registered again")

    # What the separate file avoids: Debian's supervisorctl reading the plugin's
    # section fails every command, its own status included.
    broken = tmp_path / "with-plugin.conf"
    section = "[ctlplugin:zkwatcher]"
    broken.write_text(conf.read_text() + "\n" + section
                      + ctl_conf.read_text().split(section, 1)[1])
    status = run(DEBIAN_SUPERVISORCTL, "-c", str(broken), "status")
    assert status.returncode != 0
    assert "zkwatcher_supervisor.ctlplugin:make_plugin cannot be resolved" in \
        status.stdout + status.stderr
    assert run(DEBIAN_SUPERVISORCTL, "-c", str(conf), "status").returncode == 0


def test_a_non_root_operator_needs_the_sockets_group(reachable_dir, zookeeper, zk, base_path):
    """Debian's socket is root's alone (chmod=0700).  An operator in the group that
    [unix_http_server] chown= gives it, with chmod=0770, can use both supervisorctls;
    before, neither reaches supervisord."""
    python, pythonpath = code_for_others()
    node = f"{base_path}/web/host1:1"
    config = listener_config(reachable_dir, zookeeper, base_path)
    with throwaway_user() as (operator, _):
        group = grp.getgrgid(operator.groups[0]).gr_name if operator.groups else None
        assert group is not None, "the throwaway user has no supplementary group"

        def as_operator(*command: str) -> subprocess.CompletedProcess:
            return subprocess.run(command, capture_output=True, text=True, timeout=60,
                                  cwd="/", user=operator.uid, group=operator.gid,
                                  extra_groups=list(operator.groups),
                                  env={"PATH": "/usr/bin:/bin", "PYTHONPATH": pythonpath,
                                       "HOME": operator.home})

        def plugin(ctl_conf: Path, *words: str) -> subprocess.CompletedProcess:
            # The virtualenv's supervisorctl, from a copy other users can read.
            return as_operator(python, "-m", "supervisor.supervisorctl", "-c", str(ctl_conf),
                               *words)

        first = reachable_dir / "root-only"
        first.mkdir()
        with debian_supervisord(first, config, zk, node) as (conf, ctl_conf):
            status = as_operator(DEBIAN_SUPERVISORCTL, "-c", str(conf), "status")
            assert status.returncode != 0 and "Permission denied" in \
                status.stdout + status.stderr, status.stdout + status.stderr
            result = plugin(ctl_conf, "drain", "web")
            assert result.returncode == 1 and "Permission denied" in result.stderr, \
                result.stdout + result.stderr
            assert node_exists(zk, node)

        second = reachable_dir / "group"
        second.mkdir()
        with debian_supervisord(second, config, zk, node,
                                socket_mode=f"chmod=0770\nchown=root:{group}") as (
                conf, ctl_conf):
            status = as_operator(DEBIAN_SUPERVISORCTL, "-c", str(conf), "status", "web")
            assert status.returncode == 0 and "RUNNING" in status.stdout, \
                status.stdout + status.stderr
            result = plugin(ctl_conf, "drain", "web")
            assert result.returncode == 0, result.stdout + result.stderr
            wait_until(lambda: not node_exists(zk, node), 5, what="drained by the operator")
            result = plugin(ctl_conf, "undrain", "web")
            assert result.returncode == 0, result.stdout + result.stderr
            wait_until(lambda: node_exists(zk, node), 5, what="undrained by the operator")
