"""Debian's supervisor package (``apt-get install supervisor``) with our example
files in place: its own supervisorctl keeps working, and the virtualenv's
supervisorctl with examples/debian/zkwatcherctl.conf drains.

Debian's supervisord.conf is used as the package installs it, its paths (socket,
pid file, logs, conf.d) moved to the test's directory; supervisord and
supervisorctl are the package's, run by the system Python.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from conftest import REPO, node_exists

from zkwatcher_supervisor.testing import wait_until
from zkwatcher_supervisor.testing.sandbox import die_with_parent

pytestmark = pytest.mark.e2e

DEBIAN_CONF = Path("/etc/supervisor/supervisord.conf")
DEBIAN_SUPERVISORD = "/usr/bin/supervisord"
DEBIAN_SUPERVISORCTL = "/usr/bin/supervisorctl"
EXAMPLES = REPO / "examples" / "debian"
VENV_BIN = Path(sys.executable).parent
# The system Python must not find this checkout or the virtualenv's packages.
SYSTEM_ENV = {key: value for key, value in os.environ.items()
              if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def run(*command: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env=SYSTEM_ENV, cwd="/")


def moved(text: str, moves: dict[str, str], what: str) -> str:
    for old, new in moves.items():
        assert old in text, f"{what} no longer mentions {old}"
        text = text.replace(old, new)
    return text


@pytest.fixture
def debian(tmp_path, write_config, zk, base_path):
    """Debian's supervisord running examples/debian/zkwatcher.conf from its conf.d."""
    missing = [path for path in (DEBIAN_SUPERVISORD, DEBIAN_SUPERVISORCTL, str(DEBIAN_CONF))
               if not os.path.exists(path)]
    assert not missing, (f"Debian's supervisor package is not installed ({', '.join(missing)} "
                         "missing): apt-get install supervisor, as .ci/run does")
    config = write_config(f"""
        [web]
        program = web
        service_port = 1
        service_hostname = host1
        zookeeper_path = {base_path}/web
        """)
    socket = tmp_path / "supervisor.sock"
    logs = tmp_path / "log"
    included = tmp_path / "conf.d"
    logs.mkdir()
    included.mkdir()
    conf = tmp_path / "supervisord.conf"
    conf.write_text(moved(DEBIAN_CONF.read_text(), {
        "/var/run/supervisor.sock": str(socket),
        "/var/run/supervisord.pid": str(tmp_path / "supervisord.pid"),
        "/var/log/supervisor": str(logs),
        "/etc/supervisor/conf.d": str(included)}, str(DEBIAN_CONF)))
    (included / "zkwatcher.conf").write_text(moved(
        (EXAMPLES / "zkwatcher.conf").read_text(), {
            "/opt/zkwatcher-supervisor/bin/": f"{VENV_BIN}/",
            "/etc/zk/config.cfg": str(config),
            "/var/log/supervisor": str(logs)}, "examples/debian/zkwatcher.conf"))
    (included / "web.conf").write_text(textwrap.dedent("""
        [program:web]
        command = sleep 100000
        startsecs = 0
        """))
    ctl_conf = tmp_path / "zkwatcherctl.conf"
    ctl_conf.write_text(moved((EXAMPLES / "zkwatcherctl.conf").read_text(), {
        "/var/run/supervisor.sock": str(socket),
        "/etc/zk/config.cfg": str(config)}, "examples/debian/zkwatcherctl.conf"))
    server = subprocess.Popen([DEBIAN_SUPERVISORD, "--nodaemon", "-c", str(conf)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, env=SYSTEM_ENV, cwd="/",
                              preexec_fn=die_with_parent)
    node = f"{base_path}/web/host1:1"
    try:
        wait_until(lambda: node_exists(zk, node), 30, what="the listener under Debian's "
                   f"supervisord registered (see {logs})")
        yield conf, ctl_conf, node
    finally:
        server.terminate()
        server.wait(20)


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
