"""The commands against a real supervisord and a real ZooKeeper: supervisord found
as supervisorctl finds it (a password-protected one included), and ``status``
with nothing but ``-c``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xmlrpc.client

import pytest
from supervisor.xmlrpc import SupervisorTransport
from support.sections import (
    LISTENER,
    SUPERVISORD_PASSWORD,
    SUPERVISORD_USERNAME,
    credentials_environment,
    listener_section,
    programs,
    section,
)
from support.watches import node_exists

from zkwatcher_supervisor.testing import wait_until
from zkwatcher_supervisor.testing.sandbox import LocalSupervisord

pytestmark = pytest.mark.e2e

USERNAME, PASSWORD = SUPERVISORD_USERNAME, SUPERVISORD_PASSWORD


def run(*args, cwd=None, env=None, timeout=60):
    """The command as an operator runs it: no SUPERVISOR_* variable of ours."""
    clean = {key: value for key, value in os.environ.items()
             if not key.startswith("SUPERVISOR_")}
    return subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**clean, **(env or {})})


def web_config(write_config, base_path, **kwargs):
    return write_config(f"""
        [web]
        program = web
        service_port = 80
        service_hostname = host1
        zookeeper_path = {base_path}/web
        """, **kwargs)


@pytest.fixture
def protected(tmp_path, write_config, base_path, zk):
    """A supervisord whose socket wants a username and password, with them in its
    own [supervisorctl] section (as supervisorctl is set up), running web and the
    listener; the node registered."""
    config = web_config(write_config, base_path)
    server = LocalSupervisord(tmp_path / "etc", programs("web") + listener_section(
        config, extra=credentials_environment(USERNAME, PASSWORD)),
        username=USERNAME, password=PASSWORD)
    node = f"{base_path}/web/host1:80"
    try:
        server.start()
        wait_until(lambda: node_exists(zk, node), 20, what="registered")
        yield server.config, config, node
    finally:
        server.stop()


def web_state(conf) -> str:
    rpc = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(
        USERNAME, PASSWORD, f"unix://{conf.parent}/supervisor.sock"))
    return rpc.supervisor.getProcessInfo("web")["statename"]


def test_a_password_protected_supervisord_is_found_through_its_config_alone(protected, zk):
    conf, config, node = protected
    drained = run("drain", "-C", str(conf), "-c", str(config), "web", "--reason", "test")
    assert drained.returncode == 0, drained.stderr
    assert drained.stdout == "drained [web]\n"
    wait_until(lambda: not node_exists(zk, node), 5, what="drained")
    assert web_state(conf) == "RUNNING"
    undrained = run("undrain", "web", "--supervisord-conf", str(conf), "-c", str(config))
    assert undrained.returncode == 0, undrained.stderr
    wait_until(lambda: node_exists(zk, node), 5, what="undrained")
    owner = zk.exists(node).ephemeralOwner
    handed = run("handoff", "-c", str(config), "-C", str(conf))
    assert handed.returncode == 0, handed.stderr
    assert zk.exists(node).ephemeralOwner == owner


def test_supervisorctls_search_path_finds_it_from_the_current_directory(protected, zk):
    """supervisorctl's defaults include etc/supervisord.conf relative to the current
    directory: run from there, nothing but -c is needed."""
    conf, config, node = protected
    drained = run("drain", "web", "-c", str(config), cwd=conf.parent.parent)
    assert drained.returncode == 0, drained.stderr
    wait_until(lambda: not node_exists(zk, node), 5, what="drained")
    undrained = run("undrain", "-c", str(config), "web", cwd=conf.parent)  # ./supervisord.conf
    assert undrained.returncode == 0, undrained.stderr
    wait_until(lambda: node_exists(zk, node), 5, what="undrained")


def test_a_wrong_password_exits_1_naming_supervisord(protected, zk, tmp_path):
    conf, config, node = protected
    wrong = tmp_path / "wrong-password"
    wrong.write_text("not-it\n")
    sock = f"unix://{conf.parent}/supervisor.sock"
    for extra, source in ((["--password-file", str(wrong)], f"[supervisorctl] of {conf}"),
                          (["--serverurl", sock, "-u", USERNAME, "-p", "not-it"],
                           "--serverurl")):
        result = run("drain", "web", "-c", str(config), "-C", str(conf), *extra)
        assert result.returncode == 1, result.stderr
        assert result.stderr == (f"zkwatcher-supervisor drain: supervisord at {sock} "
                                 f"({source}): 401 Unauthorized: it refused the username "
                                 "and password (or their absence)\n")
        assert "not-it" not in result.stderr
    handed = run("handoff", "-c", str(config), "--serverurl", sock)  # no credentials at all
    assert handed.returncode == 1
    assert f"supervisord at {sock} (--serverurl): 401 Unauthorized" in handed.stderr
    assert node_exists(zk, node)


def test_status_needs_only_the_config_when_the_listener_was_given_s(
        write_config, supervisord, zookeeper, zk, base_path, tmp_path):
    """The listener's command line says -s; the config's hosts lead nowhere.  status
    asks the ensemble the listener publishes; -s still overrides it."""
    nowhere = "127.0.0.1:1"
    config = web_config(write_config, base_path, hosts=nowhere)
    listener = listener_section(config).replace(f"-c {config}",
                                                f"-c {config} -s {zookeeper.hosts}")
    assert f"{LISTENER} -c {config} -s {zookeeper.hosts}" in listener
    server = supervisord(programs("web") + listener)
    node = f"{base_path}/web/host1:80"
    wait_until(lambda: node_exists(zk, node), 20, what="registered")
    status = wait_until(lambda: (r := run("status", "-c", str(config))).returncode == 0 and r,
                        10, interval=0.3, what="status exit 0")
    assert status.stdout.splitlines()[1] == (f"ok   [web] {node} registered, healthy; "
                                             "web:web=RUNNING")
    document = json.loads(run("status", "-c", str(config), "--json").stdout)
    assert document["zookeeper"]["hosts"] == zookeeper.hosts
    assert document["zookeeper"]["from"] == "the listener's status file"
    overridden = run("status", "-c", str(config), "-s", nowhere)
    assert overridden.returncode == 1
    assert f"ZooKeeper {nowhere}: unreachable" in overridden.stdout
    # drain --stop confirms the deletion in that same ensemble before it stops anything.
    env = {"SUPERVISOR_SERVER_URL": f"unix://{server.workdir}/supervisor.sock"}
    stopped = run("drain", "web", "--stop", "--wait", "0", "-c", str(config), env=env)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout.endswith("stopped web:web\n")
    assert not node_exists(zk, node) and server.info("web")["statename"] == "STOPPED"


def test_status_json_is_one_document_with_the_same_exit_status(
        write_config, supervisord, zookeeper, zk, base_path, tmp_path):
    flag = tmp_path / "flag"
    config = write_config(section(base_path, "web", 80, program="web")
                          + section(base_path, "flag", 81, cmd=f"test -f {flag}", timeout=None))
    server = supervisord(programs("web") + listener_section(config))
    web, flagged = f"{base_path}/web/host1:80", f"{base_path}/flag/host1:81"
    wait_until(lambda: node_exists(zk, web), 20, what="registered")

    def both():
        return run("status", "-c", str(config)), run("status", "--json", "-c", str(config))

    def settled():
        text, as_json = both()
        document = json.loads(as_json.stdout)
        connected = (document["listener"]["zookeeper"] or {}).get("connected")
        return text.returncode == 0 and connected and (text, as_json, document)

    text, as_json, document = wait_until(settled, 15, interval=0.3,
                                         what="status exit 0, listener connected")
    assert as_json.returncode == 0
    assert document["ok"] is True
    assert document["config"] == {"file": str(config), "read": True}
    assert document["listener"]["pid"] == server.info("zkwatcher")["pid"]
    assert document["listener"]["running"] is True
    assert document["listener"]["zookeeper"]["tls"] is False
    assert list(document["sections"]) == ["web", "flag"]
    assert document["sections"]["web"] == {
        "node": web, "ok": True, "registered": True, "healthy": True, "drained": None,
        "processes": {"web:web": "RUNNING"}, "check": None, "overdue": None}
    assert document["sections"]["flag"]["node"] == flagged
    assert document["sections"]["flag"]["healthy"] is False
    assert document["sections"]["flag"]["check"]["last_result"] is False
    assert "flag" in text.stdout and len(text.stdout.splitlines()) == 3

    env = {"SUPERVISOR_SERVER_URL": f"unix://{server.workdir}/supervisor.sock"}
    assert run("drain", "web", "--reason", "json", "-c", str(config), env=env).returncode == 0
    drained = wait_until(lambda: (d := json.loads(run("status", "--json", "-c",
                                                      str(config)).stdout))
                         ["sections"]["web"]["drained"] and d, 5, interval=0.2, what="drained")
    assert drained["sections"]["web"]["drained"]["reason"] == "json"
    assert drained["sections"]["web"]["drained"]["until"] is None
    # A node where the listener says none should be: both forms say so, exit 1.
    server.ctl("stop", "zkwatcher")
    text, as_json = both()
    assert text.returncode == as_json.returncode == 1
    document = json.loads(as_json.stdout)
    assert document["ok"] is False and document["listener"]["pid"] is None
    assert document["listener"]["problem"].startswith("no status file at ")
