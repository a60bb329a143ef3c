"""The supervisorctl plugin: drain, undrain, handoff and zkstatus typed into the
real supervisorctl (the virtualenv's), on its command line and in its shell,
against a real supervisord, ZooKeeper and listener."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from support.sections import (
    SUPERVISORD_PASSWORD,
    SUPERVISORD_USERNAME,
    credentials_environment,
    listener_section,
)
from support.watches import node_exists

from zkwatcher_supervisor.testing import term_recorder, wait_until

pytestmark = pytest.mark.e2e

SUPERVISORCTL = str(Path(sys.executable).parent / "supervisorctl")


def plugin_section(config: Path, extra: str = "") -> str:
    return textwrap.dedent(f"""
        [ctlplugin:zkwatcher]
        supervisor.ctl_factory = zkwatcher_supervisor.ctlplugin:make_plugin
        config = {config}
        """) + extra


def supervisorctl(conf: Path, *words: str, stdin: str | None = None,
                  timeout: float = 60) -> subprocess.CompletedProcess:
    """The real supervisorctl: ``words`` as its command line, or its shell fed ``stdin``."""
    return subprocess.run([SUPERVISORCTL, "-c", str(conf), *words], input=stdin,
                          capture_output=True, text=True, timeout=timeout)


def no_traceback(result: subprocess.CompletedProcess) -> None:
    output = result.stdout + result.stderr
    # supervisorctl's own report of an exception escaping a command: "error: <class ..."
    assert "Traceback" not in output and "error: <" not in output, output


def config_body(base_path: str) -> str:
    return f"""
        [web]
        program = web
        service_port = 1
        service_hostname = host1
        zookeeper_path = {base_path}/web

        [other]
        cmd = true
        service_port = 2
        service_hostname = host1
        zookeeper_path = {base_path}/other
        """


@pytest.fixture
def host(write_config, supervisord, zk, base_path, tmp_path):
    """supervisord with the plugin in its main config (supervisor and we in one
    virtualenv), a program and the listener; both sections registered."""
    config = write_config(config_body(base_path), session_timeout=10)
    server = supervisord(plugin_section(config) + term_recorder("web", tmp_path)
                         + listener_section(config))
    nodes = {"web": f"{base_path}/web/host1:1", "other": f"{base_path}/other/host1:2"}
    wait_until(lambda: all(node_exists(zk, n) for n in nodes.values()), 20, what="registered")
    return server, config, nodes


def deletion_watch(zk, node: str) -> tuple[threading.Event, list[float]]:
    gone, when = threading.Event(), []
    zk.exists(node, watch=lambda event: (when.append(time.time()), gone.set()))
    return gone, when


def test_drain_and_undrain_on_supervisorctls_command_line(host, zk):
    server, _config, nodes = host
    gone, _ = deletion_watch(zk, nodes["web"])
    # supervisorctl joins its words with spaces: the inner quotes keep the reason whole.
    result = supervisorctl(server.config, "drain", "web", "--reason", "'deploy 42'")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "drained [web]"
    assert gone.wait(5), "a consumer's watch saw no deletion"
    assert server.info("web")["statename"] == "RUNNING"
    assert node_exists(zk, nodes["other"])

    status = wait_until(lambda: (r := supervisorctl(server.config, "zkstatus")).returncode == 0
                        and "DRAINED" in r.stdout and r, 10, interval=0.2, what="zkstatus ok")
    line = next(line for line in status.stdout.splitlines() if "[web]" in line)
    assert "not registered, healthy, DRAINED" in line and "(deploy 42)" in line

    result = supervisorctl(server.config, "undrain", "web")
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "undrained [web]"
    wait_until(lambda: node_exists(zk, nodes["web"]), 5, what="registered again")
    # supervisorctl's own status is still supervisorctl's.
    builtin = supervisorctl(server.config, "status")
    assert builtin.returncode == 0 and "web" in builtin.stdout and "RUNNING" in builtin.stdout


def test_drain_and_undrain_in_supervisorctls_shell(host, zk):
    server, _config, nodes = host
    gone, _ = deletion_watch(zk, nodes["web"])
    result = supervisorctl(server.config, stdin=textwrap.dedent("""\
        drain web --reason "deploy 42"
        zkstatus
        drain --nosuch-option
        undrain web
        help drain
        """))
    no_traceback(result)
    assert result.returncode == 0  # supervisorctl's shell always exits 0
    assert gone.wait(1), "the shell's drain deleted nothing"
    assert "drained [web]" in result.stdout
    status_line = next(line for line in result.stdout.splitlines() if nodes["web"] in line)
    assert "DRAINED" in status_line and "(deploy 42)" in status_line
    assert "supervisorctl drain: unrecognized arguments: --nosuch-option" in result.stderr
    # The bad line did not end the shell: the commands after it ran.
    assert "undrained [web]" in result.stdout
    assert "--for DURATION" in result.stdout and "--stop" in result.stdout
    assert "*** No help on drain" in result.stdout  # supervisorctl's own command set's
    wait_until(lambda: node_exists(zk, nodes["web"]), 5, what="registered again")


def test_drain_for_stop_wait_stops_the_program_after_the_node_is_gone(host, zk, tmp_path):
    server, _config, nodes = host
    _, deleted = deletion_watch(zk, nodes["web"])
    result = supervisorctl(server.config, "drain", "web", "--for", "15m", "--stop",
                           "--wait", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "drained [web]; ZooKeeper confirmed; stopping in 2s" in result.stdout
    assert "stopped web:web" in result.stdout
    term = float((tmp_path / "web.term").read_text())
    print(f"node deleted -> program's SIGTERM: {term - deleted[0]:.2f}s (--wait 2)")
    assert 2.0 <= term - deleted[0] < 10
    assert server.info("web")["statename"] == "STOPPED"
    status = supervisorctl(server.config, "zkstatus")
    line = next(line for line in status.stdout.splitlines() if "[web]" in line)
    assert "DRAINED" in line and ", until " in line


def test_handoff_keeps_the_session_and_every_node(host, zk):
    server, _config, nodes = host
    czxids = {node: zk.exists(node).czxid for node in nodes.values()}
    old = server.info("zkwatcher")["pid"]
    result = supervisorctl(server.config, "handoff")
    assert result.returncode == 0, result.stdout + result.stderr
    new = server.info("zkwatcher")["pid"]
    assert new != old
    assert f"handed over: pid {old} -> pid {new}, ZooKeeper session" in result.stdout
    assert {node: zk.exists(node).czxid for node in nodes.values()} == czxids


def test_a_supervisord_elsewhere_is_refused(host, zk):
    server, _config, nodes = host
    for url in ("http://192.0.2.1:9001", "http://supervisor.example.com:9001",
                "http://[2001:db8::1]:9001"):
        for words in (["drain", "web"], ["undrain", "web"], ["handoff"], ["zkstatus"]):
            started = time.monotonic()
            result = supervisorctl(server.config, "-s", url, *words)
            assert result.returncode == 2, (url, words, result.stdout + result.stderr)
            assert f"serverurl {url} is not on this machine" in result.stderr
            assert "need a local supervisord" in result.stderr
            no_traceback(result)
            assert time.monotonic() - started < 10  # refused, not tried
    assert all(node_exists(zk, node) for node in nodes.values())
    # A loopback address is local: tried, and an unreachable one is exit 1.
    result = supervisorctl(server.config, "-s", "http://127.0.0.1:1", "drain", "web")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "supervisorctl drain: supervisord at http://127.0.0.1:1:" in result.stderr
    no_traceback(result)


def test_bad_arguments_are_one_line_and_exit_2(host, zk):
    server, _config, nodes = host
    for words, message in (
            (["drain"], "name the sections, or give --program NAME or --all"),
            (["drain", "web", "--all"], "name the sections, or give --program NAME or --all"),
            (["drain", "nosuch"], "has no section [nosuch]"),
            (["drain", "--program", "nosuch"], "bound to program 'nosuch'"),
            (["drain", "web", "--for", "soon"], "not a duration"),
            (["drain", "web", "--for", "100000d"], "longer than 3650d"),
            (["drain", "web", "--stop", "--wait", "nan"], "expected seconds between 0 and"),
            (["drain", "web", "--stop", "--wait", "-1"], "expected seconds between 0 and"),
            (["drain", "--bogus"], "unrecognized arguments: --bogus"),
            (["drain", "'web"], "No closing quotation"),
            (["undrain", "web", "--stop"], "unrecognized arguments: --stop"),
            (["handoff", "now"], "takes no arguments, got 'now'"),
            (["zkstatus", "-v"], "takes no arguments, got '-v'")):
        result = supervisorctl(server.config, *words)
        assert result.returncode == 2, (words, result.stdout + result.stderr)
        errors = result.stderr.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith(f"supervisorctl {words[0]}: "), \
            (words, result.stderr)
        assert message in errors[0], (words, errors)
        no_traceback(result)
    assert all(node_exists(zk, node) for node in nodes.values())


def test_what_could_not_be_done_is_exit_1(host):
    server, _config, _nodes = host
    assert supervisorctl(server.config, "stop", "zkwatcher").returncode == 0
    for words, message in ((["drain", "web"], "is not running"),
                           (["handoff"], "no running listener")):
        result = supervisorctl(server.config, *words)
        assert result.returncode == 1, (words, result.stdout + result.stderr)
        assert message in result.stderr, (words, result.stderr)
        no_traceback(result)
    result = supervisorctl(server.config, "zkstatus")
    assert result.returncode == 1 and "BAD" in result.stdout, result.stdout + result.stderr


def test_a_bad_plugin_section_breaks_only_the_plugins_commands(supervisord, write_config,
                                                               zk, base_path, tmp_path):
    """In a file of its own (supervisorctl reads one file only): a mistyped key and
    a missing config are named by our commands; supervisorctl's own still work."""
    config = write_config(config_body(base_path))
    server = supervisord(term_recorder("web", tmp_path) + listener_section(config))
    wait_until(lambda: node_exists(zk, f"{base_path}/web/host1:1"), 20, what="registered")
    serverurl = f"[supervisorctl]\nserverurl = unix://{server.workdir}/supervisor.sock\n"
    typo = tmp_path / "typo.conf"
    typo.write_text(serverurl + plugin_section(config, "confg = /etc/zk/config.cfg\n"))
    missing = tmp_path / "missing.conf"
    missing.write_text(serverurl + plugin_section(tmp_path / "nosuch.cfg"))
    for conf, message in ((typo, "[ctlplugin:zkwatcher]: unknown key(s) confg (known: config)"),
                          (missing, "nosuch.cfg")):
        result = supervisorctl(conf, "drain", "web")
        assert result.returncode == 2 and message in result.stderr, result.stdout + result.stderr
        no_traceback(result)
        builtin = supervisorctl(conf, "status", "web")
        assert builtin.returncode == 0 and "RUNNING" in builtin.stdout, builtin.stdout
    assert node_exists(zk, f"{base_path}/web/host1:1")


def test_supervisorctls_credentials_are_the_plugins(write_config, supervisord, zk, base_path,
                                                    tmp_path):
    """A password-protected supervisord: the plugin uses the username and password
    of supervisorctl's [supervisorctl] section and asks for nothing."""
    config = write_config(config_body(base_path))
    server = supervisord(listener_section(config, extra=credentials_environment())
                         + term_recorder("web", tmp_path) + plugin_section(config),
                         username=SUPERVISORD_USERNAME, password=SUPERVISORD_PASSWORD)
    conf = server.config
    wrong = tmp_path / "wrong.conf"
    wrong.write_text(textwrap.dedent(f"""
        [supervisorctl]
        serverurl = unix://{server.workdir}/supervisor.sock
        username = {SUPERVISORD_USERNAME}
        password = guess
        """) + plugin_section(config))
    node = f"{base_path}/web/host1:1"
    wait_until(lambda: node_exists(zk, node), 20, what="registered")
    result = supervisorctl(wrong, "drain", "web", timeout=20)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "supervisorctl drain: supervisord at" in result.stderr
    assert "401 Unauthorized" in result.stderr
    assert node_exists(zk, node)

    result = supervisorctl(conf, "drain", "web")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: not node_exists(zk, node), 5, what="drained")
    status = wait_until(lambda: "DRAINED" in (r := supervisorctl(conf, "zkstatus")).stdout
                        and r, 10, interval=0.2, what="zkstatus shows the drain")
    assert "drained by admin" in status.stdout
