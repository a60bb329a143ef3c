"""Every ``zkwatcher-supervisor`` line README.rst shows is run here, in README order,
against a real supervisord and ZooKeeper, with the README's paths replaced by
the test's: the README cannot drift from the command line.  Where README shows
output (a ``$`` prompt), the output is compared too.

A line added to README.rst fails this test until EXPECTED says what it does.
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
from typing import Callable

import pytest
from kazoo.client import KazooClient
from support.sections import listener_section
from support.watches import node_exists

from zkwatcher_supervisor.testing import wait_until
from zkwatcher_supervisor.testing.readme import ReadmeCommand, commands

pytestmark = pytest.mark.e2e

PROGRAM = "zkwatcher-supervisor"
README_CONFIG = "/etc/zk/config.cfg"
WEB, FLAG = "/services/web/web1:8080", "/services/flag/web1:9000"


@dataclass(frozen=True)
class Expect:
    status: int
    output: str = ""  # how to compare the output README shows: exact, shape, json
    before: Callable | None = None  # (sandbox) -> None
    after: Callable | None = None  # (sandbox, result) -> None


class Sandbox:
    def __init__(self, server, config, zk) -> None:
        self.server, self.config, self.zk = server, config, zk
        self.owner: int | None = None  # of the web node, before a hand-over

    def run(self, argv: list[str]) -> subprocess.CompletedProcess:
        """A README line as an operator types it, from supervisord's directory (where
        supervisorctl finds its config) and with no SUPERVISOR_* variable."""
        words = [str(self.config) if word == README_CONFIG else word for word in argv[1:]]
        if "-c" not in words and "--config" not in words and "--help" not in words:
            words += ["-c", str(self.config)]  # README relies on the default path
        env = {key: value for key, value in os.environ.items()
               if not key.startswith("SUPERVISOR_")}
        return subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", *words],
                              capture_output=True, text=True, timeout=120,
                              cwd=self.server.workdir, env={**env, "COLUMNS": "200"})

    def state(self, program: str) -> str:
        return self.server.info(program)["statename"]

    def present(self, path: str) -> bool:
        return node_exists(self.zk, path)


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


@pytest.fixture
def sandbox(supervisord, zookeeper, tmp_path):
    """README's host: [web] bound to program web with a passing check, [flag] whose
    check fails; the listener under supervisord; in a chroot of the test's own,
    so the nodes have README's paths."""
    chroot = f"/readme-{uuid.uuid4().hex[:12]}"
    root = KazooClient(hosts=zookeeper.hosts, timeout=5)
    root.start(timeout=30)
    root.ensure_path(chroot)
    root.stop()
    root.close()
    zk = KazooClient(hosts=zookeeper.hosts + chroot, timeout=5)
    zk.start(timeout=30)
    config = tmp_path / "config.cfg"
    config.write_text(textwrap.dedent(f"""
        [zkwatcher]
        hosts = {zookeeper.hosts}{chroot}
        session_timeout = 10

        [web]
        program = web
        cmd = true
        refresh = 1
        service_port = 8080
        service_hostname = web1
        zookeeper_path = /services/web

        [flag]
        cmd = test -f {tmp_path}/flag
        refresh = 1
        service_port = 9000
        service_hostname = web1
        zookeeper_path = /services/flag
        """))
    server = supervisord(textwrap.dedent("""
        [program:web]
        command = sleep 100000
        startsecs = 0
        stopsignal = KILL
        """) + listener_section(config))
    (server.workdir / "bad.cfg").write_text("[web]\ncmd = true\nzookeeper_path = /services/web\n")
    box = Sandbox(server, config, zk)
    wait_until(lambda: box.present(WEB), 20, what="web registered")
    yield box
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


def test_readme_lines_are_found_in_literal_blocks_only(tmp_path):
    """The extraction itself: commands in ``::`` blocks and code-block directives,
    prompted or not, with their shown output; never prose or other programs' lines."""
    readme = tmp_path / "README.rst"
    readme.write_text(textwrap.dedent("""\
        Run ``zkwatcher-supervisor status`` in prose: not a command.

        ::

            zkwatcher-supervisor drain web   # a comment
            # or: supervisorctl signal USR2 zkwatcher
            command = zkwatcher-supervisor -c x

        * a list item::

              $ zkwatcher-supervisor status -c a.cfg
              listener: pid 1
              $ supervisorctl status
              web RUNNING

        .. code-block:: console
           :caption: c

           zkwatcher-supervisor undrain web

        .. note::

           zkwatcher-supervisor handoff   (a note, not a literal block)
        """))
    ours = commands(PROGRAM, readme)
    assert [(c.line, c.argv, c.output) for c in ours] == [
        (5, [PROGRAM, "drain", "web"], ()),
        (11, [PROGRAM, "status", "-c", "a.cfg"], ("listener: pid 1",)),
        (19, [PROGRAM, "undrain", "web"], ()),
    ]
    assert [(c.line, c.text, c.output) for c in commands("supervisorctl", readme)] == [
        (13, "supervisorctl status", ("web RUNNING",))]
