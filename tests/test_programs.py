"""Sections bound to supervisord programs, under a real supervisord and ZooKeeper."""

from __future__ import annotations

import os
import signal
import textwrap
import threading
import time

import pytest
from support.sections import listener_section, section
from support.watches import node_exists

from zkwatcher_supervisor.testing import wait_until

pytestmark = pytest.mark.e2e

SLEEPER = "sleep 100000"


def program(name, extra=""):
    return textwrap.dedent(f"""
        [program:{name}]
        command = {SLEEPER}
        startsecs = 1
        stopsignal = KILL
        """) + extra + "\n"


class NodeEvents:
    """Timestamps of a node's creations and deletions, as a consumer's watch sees them."""

    def __init__(self, zk, path):
        self.events: list[tuple[str, float]] = []
        self._zk, self._path = zk, path
        self._cond = threading.Condition()
        zk.exists(path, watch=self._fired)

    def _fired(self, event):
        with self._cond:
            self.events.append((event.type, time.monotonic()))
            self._cond.notify_all()
        self._zk.exists(self._path, watch=self._fired)

    def wait_for(self, kind, after, timeout=10.0):
        with self._cond:
            found = self._cond.wait_for(
                lambda: [t for k, t in self.events if k == kind and t >= after], timeout)
        assert found, f"no {kind} of {self._path} within {timeout}s: {self.events}"
        return found[0]


def start(supervisord, write_config, sections, programs):
    config = write_config(sections)
    server = supervisord(programs + listener_section(config))
    return server, config


def test_node_follows_program_through_stop_start_restart(
        write_config, supervisord, zk, base_path):
    server, _ = start(supervisord, write_config, section(base_path, "web", 8080, program="web"),
                      program("web"))
    node = f"{base_path}/web/host1:8080"
    wait_until(lambda: node_exists(zk, node), 15, what="registration")
    events = NodeEvents(zk, node)

    assert "web: stopped" in server.ctl("stop", "web").stdout
    # STOPPING is sent before the process is even signalled, so the node is gone
    # by the time supervisorctl returns.
    assert not node_exists(zk, node)

    server.ctl("start", "web")
    wait_until(lambda: node_exists(zk, node), 5, what="re-registration")

    old_czxid, old_pid = zk.exists(node).czxid, server.info("web")["pid"]
    before = time.monotonic()
    server.ctl("restart", "web")
    deleted = events.wait_for("DELETED", before)
    events.wait_for("CREATED", deleted)
    # A new node for the new process, not the old one left in place.
    assert server.info("web")["pid"] != old_pid
    assert zk.exists(node).czxid != old_czxid


def test_restarted_listener_registers_running_program_from_xmlrpc(
        write_config, supervisord, zk, base_path):
    server, config = start(supervisord, write_config,
                           section(base_path, "web", 8080, program="web"), program("web"))
    node = f"{base_path}/web/host1:8080"
    wait_until(lambda: node_exists(zk, node), 15, what="registration")
    server.ctl("stop", "zkwatcher")
    assert not node_exists(zk, node)
    web_pid = server.info("web")["pid"]

    server.ctl("start", "zkwatcher")
    # web never changed state, so no event about it reaches the new listener:
    # only the XML-RPC snapshot can bring the node back.
    wait_until(lambda: node_exists(zk, node), 3, what="registration from the snapshot")
    assert server.info("web")["pid"] == web_pid
    log = (config.parent / "zkwatcher.log").read_text()
    assert "cannot read process states" not in log


def test_kill_9_deregisters_ahead_of_supervisord(write_config, supervisord, zk, base_path):
    server, config = start(
        supervisord, write_config, section(base_path, "web", 8080, program="web"),
        program("web", "autorestart = false"))
    node = f"{base_path}/web/host1:8080"
    wait_until(lambda: node_exists(zk, node), 15, what="registration")
    events = NodeEvents(zk, node)
    pid = server.info("web")["pid"]
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    deleted = events.wait_for("DELETED", killed, timeout=5)
    delay = deleted - killed
    print(f"kill -9 to deletion: {delay * 1000:.1f} ms")
    # supervisord itself reports EXITED about 1 s after a SIGKILL.
    assert delay < 0.5, delay
    wait_until(lambda: server.info("web")["statename"] == "EXITED", 5, what="EXITED")
    wait_until(lambda: f"(pid {pid}) died" in (config.parent / "zkwatcher.log").read_text(), 5,
               what="death logged")


@pytest.mark.parametrize(("running", "passing"),
                         [(True, True), (True, False), (False, True), (False, False)])
def test_program_and_cmd_must_both_hold(
        running, passing, write_config, supervisord, zk, base_path, tmp_path):
    flag, runs = tmp_path / "ok", tmp_path / "runs"
    if passing:
        flag.touch()
    control = section(base_path, "control", 1, cmd="true", refresh=None, timeout=None)
    server, config = start(
        supervisord, write_config,
        section(base_path, "web", 8080, program="web", cmd=f"echo >> {runs}; test -f {flag}",
                refresh=5, timeout=None) + control,
        program("web", "autostart = true" if running else "autostart = false"))
    node = f"{base_path}/web/host1:8080"
    log = config.parent / "zkwatcher.log"
    if running and passing:
        wait_until(lambda: node_exists(zk, node), 15, what="registration")
    elif running:
        wait_until(lambda: server.info("web")["statename"] == "RUNNING", 15, what="RUNNING")
        # The check that runs on entering RUNNING has failed.
        wait_until(lambda: "[web] check failed" in log.read_text(), 5, what="check failed")
        assert not node_exists(zk, node)
    else:
        wait_until(lambda: node_exists(zk, f"{base_path}/control/host1:1"), 15,
                   what="the listener running")
        assert not node_exists(zk, node)
        assert not runs.exists()  # no check runs while the program is not RUNNING
    # Flip the part that was missing (or the check, when both held) and look again.
    if not running:
        server.ctl("start", "web")  # entering RUNNING runs the check at once
        if passing:
            wait_until(lambda: node_exists(zk, node), 5, what="registration on RUNNING")
        else:
            wait_until(lambda: "[web] check failed" in log.read_text(), 5, what="check failed")
            assert not node_exists(zk, node)
    elif not passing:
        flag.touch()
        wait_until(lambda: node_exists(zk, node), 5 + 2, what="registration after the check passes")
    else:
        flag.unlink()
        wait_until(lambda: not node_exists(zk, node), 5 + 2, what="deregistration on failure")


def test_group_star_needs_every_numprocs_process(write_config, supervisord, zk, base_path):
    server, _ = start(
        supervisord, write_config, section(base_path, "web", 8080, program="web:*"),
        program("web", "numprocs = 2\nprocess_name = %(program_name)s_%(process_num)02d"))
    node = f"{base_path}/web/host1:8080"
    wait_until(lambda: node_exists(zk, node), 15, what="registration")
    server.ctl("stop", "web:web_01")
    assert not node_exists(zk, node)
    server.ctl("start", "web:web_01")
    wait_until(lambda: node_exists(zk, node), 5, what="re-registration")


def test_program_matching_nothing_is_a_warning_and_stays_down(
        write_config, supervisord, zk, base_path):
    server, config = start(
        supervisord, write_config,
        section(base_path, "ghost", 8080, program="ghost")
        + section(base_path, "web", 1, program="web"),
        program("web"))
    wait_until(lambda: node_exists(zk, f"{base_path}/web/host1:1"), 15, what="web registered")
    log = config.parent / "zkwatcher.log"
    wait_until(lambda: "[ghost] program ghost:ghost matches no supervisord process; "
               "section stays down" in log.read_text(), 5, what="ghost logged")
    assert not node_exists(zk, f"{base_path}/ghost/host1:8080")
    assert server.info("zkwatcher")["statename"] == "RUNNING"


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
