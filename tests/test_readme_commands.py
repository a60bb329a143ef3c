"""Every ``zkwatcher-supervisor`` and ``supervisorctl`` line README.rst shows is run
here, in README order, against a real supervisord, ZooKeeper and listener, with
the README's paths replaced by the test's: the README cannot drift from the
command line.  Where README shows output (a ``$`` prompt), the output is
compared too.  supervisorctl's lines run in the setup README shows them in:
supervisor in our virtualenv (the plugin in supervisord.conf), or Debian's
supervisor package with examples/debian/ in place.

A line added to README.rst fails this test until EXPECTED (or CTL_EXPECTED)
says what it does; only setup steps (SETUP_PROGRAMS) are left out.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from kazoo.client import KazooClient
from support.debian import DEBIAN_SUPERVISORCTL, SYSTEM_ENV, VENV_BIN, debian_supervisord, moved
from support.sections import listener_section
from support.watches import node_exists

from zkwatcher_supervisor.testing import wait_until
from zkwatcher_supervisor.testing.readme import (
    ReadmeCommand,
    commands,
    literal_blocks,
    programs_of,
    readme_path,
)

pytestmark = pytest.mark.e2e

PROGRAM = "zkwatcher-supervisor"
CTL = "supervisorctl"
README_CONFIG = "/etc/zk/config.cfg"
README_SUPERVISORD_CONF = "/etc/supervisord.conf"
README_VENV_SUPERVISORCTL = "/opt/zkwatcher-supervisor/bin/supervisorctl"
VENV_SUPERVISORCTL = str(VENV_BIN / "supervisorctl")
WEB, FLAG = "/services/web/web1:8080", "/services/flag/web1:9000"
# Steps that install or set up rather than operate: package managers, pip and
# virtualenvs, users and groups, the init system.  A README line that runs one
# of these (even chained with one of our commands) is not run here.
SETUP_PROGRAMS = frozenset({"apt-get", "apt", "dpkg", "pip", "pip3", "python3", "python",
                            "adduser", "useradd", "usermod", "systemctl", "service"})


@dataclass(frozen=True)
class Expect:
    status: int
    output: str = ""  # how to compare the output README shows: exact, shape, json
    before: Callable | None = None  # (sandbox) -> None
    after: Callable | None = None  # (sandbox, result) -> None
    setup: str = "virtualenv"  # supervisorctl lines: "virtualenv" or "debian", as README says


class Sandbox:
    def __init__(self, server, config, zk) -> None:
        self.server, self.config, self.zk = server, config, zk
        self.owner: int | None = None  # of the web node, before a hand-over
        self.listener: int | None = None  # its pid, before a hand-over
        self.stat = None  # of the web node, before a hand-over

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        """A README line as an operator types it, from supervisord's directory (where
        supervisorctl finds its config) and with no SUPERVISOR_* variable."""
        words = [str(self.config) if word == README_CONFIG else word for word in argv[1:]]
        if "-c" not in words and "--config" not in words and "--help" not in words:
            words += ["-c", str(self.config)]  # README relies on the default path
        return subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", *words],
                              capture_output=True, text=True, timeout=120,
                              cwd=self.server.workdir,
                              env={**without_supervisor_variables(), "COLUMNS": "200"})

    def supervisorctl(self, argv: list[str]) -> subprocess.CompletedProcess:
        """A README supervisorctl line in README's virtualenv setup: supervisorctl is
        the virtualenv's, run from supervisord's directory, where its search path
        finds supervisord.conf (which holds the plugin's section)."""
        return run_supervisorctl(argv, {CTL: VENV_SUPERVISORCTL},
                                 {README_SUPERVISORD_CONF: str(self.server.config)},
                                 cwd=self.server.workdir, env=without_supervisor_variables())

    def state(self, program: str) -> str:
        return self.server.info(program)["statename"]

    def present(self, path: str) -> bool:
        return node_exists(self.zk, path)


class DebianHost:
    """README's Debian setup: Debian's supervisord with examples/debian/ in place."""

    def __init__(self, conf: Path, ctl_conf: Path, zk) -> None:
        self.conf, self.ctl_conf, self.zk = conf, ctl_conf, zk

    def supervisorctl(self, argv: list[str]) -> subprocess.CompletedProcess:
        """A README supervisorctl line there: a bare ``supervisorctl`` is Debian's
        (/usr/bin, on root's PATH), run by the system Python; where README gives no
        ``-c``, Debian's finds /etc/supervisor/supervisord.conf, here the test's copy."""
        return run_supervisorctl(argv, {CTL: DEBIAN_SUPERVISORCTL},
                                 {"/etc/supervisor/zkwatcherctl.conf": str(self.ctl_conf),
                                  "/etc/supervisor/supervisord.conf": str(self.conf)},
                                 cwd="/", env=SYSTEM_ENV, default_conf=self.conf)

    def present(self, path: str) -> bool:
        return node_exists(self.zk, path)


def without_supervisor_variables() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("SUPERVISOR_")}


def run_supervisorctl(argv: list[str], programs: dict[str, str], paths: dict[str, str], *,
                      cwd: str | Path, env: dict[str, str], default_conf: Path | None = None
                      ) -> subprocess.CompletedProcess:
    """``argv`` as README prints it, with README's programs and paths replaced by
    the test's: ``programs`` for a bare name, the virtualenv's supervisorctl for
    README's /opt/zkwatcher-supervisor/bin/supervisorctl."""
    assert os.geteuid() == 0, "README's sudo lines are run as root"
    # The tests run as root, where sudo changes nothing: it is dropped.
    words = argv[1:] if argv[0] == "sudo" else list(argv)
    assert not {"&&", "||", ";", "|"} & set(words), f"a chained line: {argv}"
    programs = {**programs, README_VENV_SUPERVISORCTL: VENV_SUPERVISORCTL}
    assert words[0] in programs, f"which supervisorctl is {words[0]}?"
    words = [programs[words[0]]] + [paths.get(word, word) for word in words[1:]]
    unknown = [word for word in words[1:] if word.startswith(("/etc/", "/opt/", "/var/"))]
    assert not unknown, f"README paths this test has no file for: {unknown}"
    if "-c" not in words and default_conf is not None:
        words[1:1] = ["-c", str(default_conf)]
    return subprocess.run(words, capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**env, "COLUMNS": "200"})


def node_gone(sandbox, _result):
    wait_until(lambda: not sandbox.present(WEB), 5, what="node gone")
    assert sandbox.state("web") == "RUNNING"


def node_back(sandbox, _result):
    wait_until(lambda: sandbox.present(WEB), 5, what="node back")


def web_stopped(sandbox, result):
    assert not sandbox.present(WEB)
    assert sandbox.state("web") == "STOPPED"
    assert result.stdout.endswith("stopped web:web\n")


def session_kept(sandbox, result):
    assert "session" in result.stdout and "kept" in result.stdout
    assert sandbox.zk.exists(WEB).ephemeralOwner == sandbox.owner


def remember_owner(sandbox):
    sandbox.owner = sandbox.zk.exists(WEB).ephemeralOwner


def web_back_in_service(sandbox):
    if sandbox.run([PROGRAM, "undrain", "web"]).returncode != 0:
        raise AssertionError("undrain failed")
    sandbox.server.ctl("start", "web")
    wait_until(lambda: sandbox.present(WEB), 10, what="web registered again")


EXPECTED = {
    "zkwatcher-supervisor --help": Expect(0, "exact"),
    "zkwatcher-supervisor -c bad.cfg --check-config": Expect(2, "exact"),
    "zkwatcher-supervisor handoff -c /etc/zk/config.cfg": Expect(
        0, before=remember_owner, after=session_kept),
    "zkwatcher-supervisor drain web --reason 'deploy 42'": Expect(0, after=node_gone),
    "zkwatcher-supervisor undrain web": Expect(0, after=node_back),
    "zkwatcher-supervisor drain --program web --for 15m": Expect(0, after=node_gone),
    "zkwatcher-supervisor drain web --stop --wait 10": Expect(0, after=web_stopped),
    "zkwatcher-supervisor status -c /etc/zk/config.cfg": Expect(
        0, "shape", before=web_back_in_service),
    "zkwatcher-supervisor status -c /etc/zk/config.cfg --json": Expect(0, "json"),
}



def remember_listener(sandbox):
    sandbox.listener = sandbox.server.info("zkwatcher")["pid"]
    sandbox.stat = sandbox.zk.exists(WEB)


def successor_on_the_same_session(sandbox, _result):
    """README: same nodes, same czxid, not even a data change for consumers."""
    def successor_connected() -> bool:
        info = sandbox.server.info("zkwatcher")
        if info["pid"] in (0, sandbox.listener) or info["statename"] != "RUNNING":
            return False
        listener = json.loads(sandbox.run([PROGRAM, "status", "--json"]).stdout)["listener"]
        return listener["pid"] == info["pid"] and listener["zookeeper"]["connected"]

    wait_until(successor_connected, 30, interval=0.2, what="the successor connected")
    stat = sandbox.zk.exists(WEB)
    assert (stat.ephemeralOwner, stat.czxid, stat.mzxid) == (
        sandbox.stat.ephemeralOwner, sandbox.stat.czxid, sandbox.stat.mzxid)


def web_shown_drained(sandbox, result):
    line = next(line for line in result.stdout.splitlines() if "[web]" in line)
    assert "not registered" in line and "DRAINED" in line, result.stdout


def undrained_then_started(sandbox, result):
    assert result.stdout.strip() == "undrained [web]"
    sandbox.server.ctl("start", "web")
    wait_until(lambda: sandbox.present(WEB), 10, what="web registered again")


def debian_node_gone(debian, result):
    assert result.stdout.strip() == "drained [web]"
    wait_until(lambda: not debian.present(WEB), 5, what="node gone")


def both_running(_debian, result):
    states = dict(line.split()[:2] for line in result.stdout.splitlines())
    assert states == {"web": "RUNNING", "zkwatcher": "RUNNING"}, result.stdout


CTL_EXPECTED = {
    "supervisorctl signal USR2 zkwatcher": Expect(
        0, before=remember_listener, after=successor_on_the_same_session),
    "supervisorctl -c /etc/supervisord.conf drain web --for 15m --stop --wait 10": Expect(
        0, after=web_stopped),
    "supervisorctl -c /etc/supervisord.conf zkstatus": Expect(0, after=web_shown_drained),
    "supervisorctl -c /etc/supervisord.conf undrain web": Expect(
        0, after=undrained_then_started),
    "supervisorctl -c /etc/supervisord.conf handoff": Expect(
        0, before=remember_owner, after=session_kept),
    "sudo /opt/zkwatcher-supervisor/bin/supervisorctl -c /etc/supervisor/zkwatcherctl.conf"
    " drain web": Expect(0, setup="debian", after=debian_node_gone),
    "sudo supervisorctl status": Expect(0, setup="debian", after=both_running),
}


def setup_step(command: ReadmeCommand) -> bool:
    return bool(SETUP_PROGRAMS & set(programs_of(command.text)))


def readme_plugin_section(config: Path) -> str:
    """README's ``[ctlplugin:zkwatcher]`` block, naming the test's config."""
    block = next("\n".join(lines) for _, lines in literal_blocks(readme_path().read_text())
                 if lines[0] == "[ctlplugin:zkwatcher]")
    return "\n" + moved(block, {README_CONFIG: str(config)}, "README's plugin section") + "\n"

def key(command: ReadmeCommand) -> str:
    return shlex.join(command.argv)


def normalized_help(text: str) -> str:
    """Help as argparse lays it out on any Python: 3.13 prints ``-c, --config FILE``
    where earlier ones print ``-c FILE, --config FILE``; lines wrap accordingly."""
    text = re.sub(r"(-\w) ([A-Z_]+), (--[\w-]+) \2\b", r"\1, \3 \2", text)
    return " ".join(text.split())


def shape(text: str) -> str:
    """A status line with its counts and ages left out."""
    return re.sub(r"\d+", "N", text)


def same_document(shown, actual, where: str = "") -> None:
    """README's JSON example and the real document: the same keys everywhere, the same
    kinds of value, and the same truth values and texts (paths and numbers vary)."""
    if isinstance(shown, dict):
        assert isinstance(actual, dict) and list(shown) == list(actual), (where, actual)
        for name in shown:
            same_document(shown[name], actual[name], f"{where}.{name}")
    elif isinstance(shown, bool) or shown is None:
        assert actual is shown, (where, actual)
    elif isinstance(shown, (int, float)):
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool), where
    elif where.endswith((".file", ".status_file", ".hosts")):
        assert isinstance(actual, str), where
    else:
        assert actual == shown, (where, actual)


def printing_as_shown(sandbox, command: ReadmeCommand) -> subprocess.CompletedProcess | None:
    result = sandbox.run(command.argv)
    return result if shape(result.stdout.rstrip("\n")) == shape("\n".join(command.output)) \
        else None


def compare(command: ReadmeCommand, how: str, result: subprocess.CompletedProcess) -> None:
    shown = "\n".join(command.output)
    printed = (result.stdout + result.stderr).rstrip("\n")
    if how == "exact" and command.argv[1:] == ["--help"]:
        assert normalized_help(printed) == normalized_help(shown)
    elif how == "exact":
        assert printed == shown
    elif how == "shape":
        assert shape(printed) == shape(shown)
    elif how == "json":
        same_document(json.loads(shown), json.loads(result.stdout))
    else:
        assert not shown, f"README shows output for line {command.line}; say how to compare it"


def chroot_client(zookeeper) -> tuple[str, KazooClient]:
    """A chroot of the test's own, so the nodes have README's paths; a client in it."""
    chroot = f"/readme-{uuid.uuid4().hex[:12]}"
    root = KazooClient(hosts=zookeeper.hosts, timeout=5)
    root.start(timeout=30)
    root.ensure_path(chroot)
    root.stop()
    root.close()
    zk = KazooClient(hosts=zookeeper.hosts + chroot, timeout=5)
    zk.start(timeout=30)
    return zookeeper.hosts + chroot, zk


def readme_config(directory: Path, hosts: str) -> Path:
    """README's host: [web] bound to program web with a passing check, [flag] whose
    check fails."""
    config = directory / "config.cfg"
    config.write_text(textwrap.dedent(f"""
        [zkwatcher]
        hosts = {hosts}
        session_timeout = 10

        [web]
        program = web
        cmd = true
        refresh = 1
        service_port = 8080
        service_hostname = web1
        zookeeper_path = /services/web

        [flag]
        cmd = test -f {directory}/flag
        refresh = 1
        service_port = 9000
        service_hostname = web1
        zookeeper_path = /services/flag
        """))
    return config


@pytest.fixture
def sandbox(supervisord, zookeeper, tmp_path):
    """README's host with supervisor in our virtualenv: the listener under
    supervisord, and README's plugin section in supervisord.conf."""
    hosts, zk = chroot_client(zookeeper)
    config = readme_config(tmp_path, hosts)
    server = supervisord(textwrap.dedent("""
        [program:web]
        command = sleep 100000
        startsecs = 0
        stopsignal = KILL
        """) + listener_section(config) + readme_plugin_section(config))
    (server.workdir / "bad.cfg").write_text("[web]\ncmd = true\nzookeeper_path = /services/web\n")
    box = Sandbox(server, config, zk)
    wait_until(lambda: box.present(WEB), 20, what="web registered")
    yield box
    zk.stop()
    zk.close()


@pytest.fixture
def debian(zookeeper, tmp_path):
    """README's host with Debian's supervisor package and examples/debian/."""
    directory = tmp_path / "debian"
    directory.mkdir()
    hosts, zk = chroot_client(zookeeper)
    try:
        with debian_supervisord(directory, readme_config(directory, hosts), zk, WEB) as (
                conf, ctl_conf):
            yield DebianHost(conf, ctl_conf, zk)
    finally:
        zk.stop()
        zk.close()


def test_every_zkwatcher_supervisor_line_of_the_readme_runs_as_shown(sandbox):
    found = commands(PROGRAM)
    assert {key(command) for command in found} == set(EXPECTED), \
        "README's command lines and EXPECTED differ"
    for command in found:
        expect = EXPECTED[key(command)]
        if expect.before:
            expect.before(sandbox)
        if expect.output == "shape":  # counts and states settle after a start
            result = wait_until(lambda shown=command: printing_as_shown(sandbox, shown), 20,
                                interval=0.5, what=f"line {command.line} printing as shown")
        else:
            result = sandbox.run(command.argv)
        assert result.returncode == expect.status, (command.line, command.text,
                                                    result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        compare(command, expect.output, result)
        if expect.after:
            expect.after(sandbox, result)


def test_every_supervisorctl_line_of_the_readme_runs_as_shown(sandbox, debian):
    found = [command for command in commands(CTL) if not setup_step(command)]
    assert {key(command) for command in found} == set(CTL_EXPECTED), \
        "README's supervisorctl lines and CTL_EXPECTED differ"
    for command in found:
        expect = CTL_EXPECTED[key(command)]
        host = sandbox if expect.setup == "virtualenv" else debian
        if expect.before:
            expect.before(host)
        result = host.supervisorctl(command.argv)
        assert result.returncode == expect.status, (command.line, command.text,
                                                    result.stdout, result.stderr)
        output = result.stdout + result.stderr
        assert "Traceback" not in output and "error: <" not in output, output
        compare(command, expect.output, result)
        if expect.after:
            expect.after(host, result)


def test_readme_lines_are_found_in_literal_blocks_only(tmp_path):
    """The extraction itself: commands in ``::`` blocks and code-block directives,
    prompted or not, with their shown output, after ``sudo``, by any path, offered
    as ``# or:``; never prose, comments or other programs' lines."""
    readme = tmp_path / "README.rst"
    readme.write_text(textwrap.dedent("""\
        Run ``zkwatcher-supervisor status`` in prose: not a command.

        ::

            zkwatcher-supervisor drain web   # a comment
            # or: supervisorctl signal USR2 zkwatcher
            # supervisorctl stop web: a comment only
            command = zkwatcher-supervisor -c x
            zkwatcher-supervisor: an error message

        * a list item::

              $ zkwatcher-supervisor status -c a.cfg
              listener: pid 1
              $ supervisorctl status
              web RUNNING

        .. code-block:: console
           :caption: c

           zkwatcher-supervisor undrain web
           sudo /opt/venv/bin/supervisorctl -c x.conf drain web
           sudo apt-get install supervisor && supervisorctl reread

        .. note::

           zkwatcher-supervisor handoff   (a note, not a literal block)
        """))
    ours = commands(PROGRAM, readme)
    assert [(c.line, c.argv, c.output) for c in ours] == [
        (5, [PROGRAM, "drain", "web"], ()),
        (13, [PROGRAM, "status", "-c", "a.cfg"], ("listener: pid 1",)),
        (21, [PROGRAM, "undrain", "web"], ()),
    ]
    ctl = commands(CTL, readme)
    assert [(c.line, c.text, c.output) for c in ctl] == [
        (6, "supervisorctl signal USR2 zkwatcher", ()),
        (15, "supervisorctl status", ("web RUNNING",)),
        (22, "sudo /opt/venv/bin/supervisorctl -c x.conf drain web", ()),
        (23, "sudo apt-get install supervisor && supervisorctl reread", ()),
    ]
    assert [c.line for c in ctl if setup_step(c)] == [23]
