"""Debian's supervisor package (``apt-get install supervisor``) run with our
example files (examples/debian/) in place, its paths moved to a test's directory.

supervisord and Debian's supervisorctl are the package's, run by the system
Python, which must not see this checkout or the virtualenv's packages.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

from support.users import REPO
from support.watches import node_exists
from zkwatcher_supervisor.testing import wait_until
from zkwatcher_supervisor.testing.sandbox import die_with_parent

DEBIAN_CONF = Path("/etc/supervisor/supervisord.conf")
DEBIAN_SUPERVISORD = "/usr/bin/supervisord"
DEBIAN_SUPERVISORCTL = "/usr/bin/supervisorctl"
EXAMPLES = REPO / "examples" / "debian"
VENV_BIN = Path(sys.executable).parent
# The system Python must not find this checkout or the virtualenv's packages.
SYSTEM_ENV = {key: value for key, value in os.environ.items()
              if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}


def moved(text: str, moves: dict[str, str], what: str) -> str:
    for old, new in moves.items():
        assert old in text, f"{what} no longer mentions {old}"
        text = text.replace(old, new)
    return text


def debian_installed() -> None:
    missing = [path for path in (DEBIAN_SUPERVISORD, DEBIAN_SUPERVISORCTL, str(DEBIAN_CONF))
               if not os.path.exists(path)]
    assert not missing, (f"Debian's supervisor package is not installed ({', '.join(missing)} "
                         "missing): apt-get install supervisor, as .ci/run does")


@contextlib.contextmanager
def debian_supervisord(directory: Path, config: Path, zk, node: str,
                       socket_mode: str = "chmod=0700") -> Iterator[tuple[Path, Path]]:
    """Debian's supervisord running examples/debian/zkwatcher.conf from its conf.d
    (and a ``[program:web]``), until ``node`` is registered; yields its config and
    examples/debian/zkwatcherctl.conf, both moved to ``directory``.
    ``socket_mode`` replaces Debian's ``chmod=0700`` of [unix_http_server]."""
    debian_installed()
    socket = directory / "supervisor.sock"
    logs = directory / "log"
    included = directory / "conf.d"
    logs.mkdir()
    included.mkdir()
    conf = directory / "supervisord.conf"
    conf.write_text(moved(DEBIAN_CONF.read_text(), {
        "/var/run/supervisor.sock": str(socket),
        "/var/run/supervisord.pid": str(directory / "supervisord.pid"),
        "/var/log/supervisor": str(logs),
        "/etc/supervisor/conf.d": str(included),
        "chmod=0700": socket_mode}, str(DEBIAN_CONF)))
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
    ctl_conf = directory / "zkwatcherctl.conf"
    ctl_conf.write_text(moved((EXAMPLES / "zkwatcherctl.conf").read_text(), {
        "/var/run/supervisor.sock": str(socket),
        "/etc/zk/config.cfg": str(config)}, "examples/debian/zkwatcherctl.conf"))
    server = subprocess.Popen([DEBIAN_SUPERVISORD, "--nodaemon", "-c", str(conf)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, env=SYSTEM_ENV, cwd="/",
                              preexec_fn=die_with_parent)
    try:
        wait_until(lambda: node_exists(zk, node), 30, what="the listener under Debian's "
                   f"supervisord registered (see {logs})")
        yield conf, ctl_conf
    finally:
        server.terminate()
        server.wait(20)
