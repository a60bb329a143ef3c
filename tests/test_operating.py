"""What the README's "Operating" and "Check commands" sections promise an operator,
each against a real ZooKeeper (and supervisord where the promise involves it)."""

from __future__ import annotations

import json
import os
import re
import textwrap
import time

import pytest
from kazoo.security import ACL, Id, Permissions
from support.sections import listener_section, section
from support.watches import node_exists

from zkwatcher_supervisor.status import process_alive
from zkwatcher_supervisor.testing import wait_until

pytestmark = pytest.mark.e2e


def test_a_failing_checks_last_2_kib_of_output_appear_in_the_log(
        write_config, driver, base_path, tmp_path):
    """stdout and stderr both reach the log, the end of them, up to 2 KiB."""
    script = tmp_path / "check.sh"
    script.write_text(textwrap.dedent("""\
        head -c 3000 /dev/zero | tr '\\0' x
        echo
        echo "first reason" >&2
        echo "second reason"
        exit 1
        """))
    drv = driver(write_config(section(base_path, "s", 1, cmd=f"sh {script}")))
    wait_until(lambda: "[s] check failed" in drv.stderr(), 5, what="check failed")
    (line,) = [ln for ln in drv.stderr().splitlines() if "[s] check failed" in ln]
    assert "exit status 1" in line
    # Everything after the 3000 x's fits in 2 KiB, so all of it is shown ...
    assert "first reason" in drv.stderr() and "second reason" in drv.stderr()
    # ... and of the x's only what fits: the beginning of the output is not.
    xs = max((len(run) for run in re.findall(r"x+", drv.stderr())), default=0)
    assert 2048 - 100 < xs < 2048, xs


def test_a_check_that_exits_takes_what_it_left_running_with_it(
        write_config, driver, zk, base_path, tmp_path):
    child = tmp_path / "child.pid"
    drv = driver(write_config(section(
        base_path, "s", 1, cmd=f"sleep 300 & echo $! > {child}; exit 0", refresh=30)))
    wait_until(lambda: node_exists(zk, f"{base_path}/s/host1:1"), 10, what="registered")
    pid = int(child.read_text())
    started = time.monotonic()
    # Killed (a zombie until whoever inherited it reaps it counts as gone).
    wait_until(lambda: not process_alive(pid), 1, interval=0.01, what="the check's child killed")
    print(f"child gone after {time.monotonic() - started:.2f}s")
    assert drv.process.poll() is None


def test_verbose_logs_kazoo_and_syslog_without_dev_log_falls_back_to_stderr(
        write_config, driver, zk, base_path, tmp_path):
    verbose = driver(write_config(section(base_path, "v", 1, cmd="true")), args=("-v",))
    wait_until(lambda: node_exists(zk, f"{base_path}/v/host1:1"), 10, what="registered")
    wait_until(lambda: "registered " in verbose.stderr(), 5, what="registration logged")
    # Debug lines, kazoo's included (its requests to the server).
    assert re.search(r"DEBUG .*(Sending request|Received response)", verbose.stderr()), \
        verbose.stderr()[-3000:]

    (tmp_path / "syslog").mkdir()
    config = write_config(section(base_path, "s", 2, cmd="true"), name="syslog/zkwatcher.cfg")
    syslog = driver(config, args=("-l",))
    wait_until(lambda: node_exists(zk, f"{base_path}/s/host1:2"), 10, what="registered")
    if os.path.exists("/dev/log"):
        assert "logging to stderr" not in syslog.stderr()
    else:
        wait_until(lambda: "registered " in syslog.stderr(), 5, what="registration logged")
        assert "--syslog: /dev/log does not exist; logging to stderr" in syslog.stderr()
        assert " DEBUG " not in syslog.stderr()


def test_without_xmlrpc_access_a_warning_and_process_states_from_events(
        write_config, driver, zk, base_path, monkeypatch):
    """Run outside supervisord (no SUPERVISOR_SERVER_URL): the listener says so and
    learns process states from the events it is sent."""
    config = write_config(section(base_path, "web", 1, program="web"))
    monkeypatch.delenv("SUPERVISOR_SERVER_URL", raising=False)
    drv = driver(config)
    node = f"{base_path}/web/host1:1"
    wait_until(lambda: "no XML-RPC access" in drv.stderr(), 5, what="warning")
    drv.tick()
    assert not node_exists(zk, node)
    drv.send("PROCESS_STATE_RUNNING",
             f"processname:web groupname:web from_state:STARTING pid:{os.getpid()}")
    wait_until(lambda: node_exists(zk, node), 2, interval=0.01, what="registered from the event")
    drv.send("PROCESS_STATE_STOPPING",
             f"processname:web groupname:web from_state:RUNNING pid:{os.getpid()}")
    wait_until(lambda: not node_exists(zk, node), 2, interval=0.01, what="deregistered")


def test_an_existing_parents_acl_is_left_as_it_is(
        write_config, driver, zk, zookeeper, base_path):
    parent = f"{base_path}/svc"
    own_acl = [ACL(Permissions.READ | Permissions.CREATE | Permissions.DELETE,
                   Id("world", "anyone"))]
    zk.create(parent, b"theirs", acl=own_acl, makepath=True)
    before_acl, _ = zk.get_acls(parent)
    drv = driver(write_config(section(base_path, "svc", 1, cmd="true") + textwrap.dedent("""
        [auth]
        user = deploy
        password = s3cret
        """)))
    wait_until(lambda: node_exists(zk, f"{parent}/host1:1"), 10, what="registered")
    acl, stat = zk.get_acls(parent)
    assert acl == before_acl == own_acl
    assert (stat.aversion, stat.version, zk.get(parent)[0]) == (0, 0, b"theirs")
    assert drv.process.poll() is None


def test_reload_moves_a_changed_path_and_keeps_zookeeper_settings_until_a_restart(
        write_config, supervisord, zookeeper, zk, base_path, tmp_path):
    """``supervisorctl signal HUP``: a section whose path changed moves its node;
    a changed ``[zkwatcher] session_timeout`` and a new ``[auth]`` are not applied
    (same session, same negotiated timeout, no ACL) and the log says they need a
    restart."""
    old_path, new_path = f"{base_path}/old", f"{base_path}/new"
    body = section(base_path, "web", 1, program="web", path=old_path) \
        + section(base_path, "other", 2, cmd="true")
    config = write_config(body, session_timeout=10)
    server = supervisord(textwrap.dedent("""
        [program:web]
        command = sleep 100000
        startsecs = 0
        stopsignal = KILL
        """) + listener_section(config))
    wait_until(lambda: node_exists(zk, f"{old_path}/host1:1")
               and node_exists(zk, f"{base_path}/other/host1:2"), 15, what="registered")
    other = zk.exists(f"{base_path}/other/host1:2")
    assert zookeeper.session_timeouts()[other.ephemeralOwner] == 10000
    pid = server.info("zkwatcher")["pid"]

    write_config(body.replace(old_path, new_path)
                 + "[auth]\nuser = deploy\npassword = s3cret\n", session_timeout=20,
                 settings=f"status_file = {tmp_path}/moved.json\n")
    result = server.ctl("signal", "HUP", "zkwatcher")
    assert result.returncode == 0, result.stdout + result.stderr
    wait_until(lambda: node_exists(zk, f"{new_path}/host1:1")
               and not node_exists(zk, f"{old_path}/host1:1"), 5, what="node moved")
    log = config.parent / "zkwatcher.log"
    wait_until(lambda: "[zkwatcher]/[auth] changes need a restart" in log.read_text(), 5,
               what="restart needed logged")
    assert "a [zkwatcher] status_file change needs a restart" in log.read_text()
    assert not (tmp_path / "moved.json").exists()
    moved = zk.exists(f"{new_path}/host1:1")
    assert moved.ephemeralOwner == other.ephemeralOwner
    assert json.loads(zk.get(f"{new_path}/host1:1")[0])["pid"] == pid
    assert zookeeper.session_timeouts()[other.ephemeralOwner] == 10000
    # Still without [auth]: the moved node is as open as the session that made it.
    assert zk.get_acls(f"{new_path}/host1:1")[0] == [ACL(Permissions.ALL, Id("world", "anyone"))]
    after = zk.exists(f"{base_path}/other/host1:2")
    assert (after.czxid, after.mzxid) == (other.czxid, other.mzxid)  # untouched
    assert server.info("zkwatcher")["pid"] == pid

