"""The listener under a real supervisord, against a real ZooKeeper."""

from __future__ import annotations

import os
import select
import signal
import time

import pytest
from support.sections import listener_section, section
from support.watches import node_exists

from zkwatcher_supervisor.testing import wait_until

pytestmark = pytest.mark.e2e


def test_cmd_section_registers_within_refresh_plus_a_tick(
        write_config, supervisord, zk, base_path, tmp_path):
    flag = tmp_path / "up"
    config = write_config(section(base_path, "flag", 9000, cmd=f"test -f {flag}", refresh=5,
                                  timeout=None))
    server = supervisord(listener_section(config))
    wait_until(lambda: server.info("zkwatcher")["statename"] == "RUNNING", 10, what="listener")
    node = f"{base_path}/flag/host1:9000"
    log = config.parent / "zkwatcher.log"
    wait_until(lambda: "[flag] check failed" in log.read_text(), 5, what="first check failed")
    assert not node_exists(zk, node)

    timings = []
    for _ in range(2):
        flag.touch()
        started = time.monotonic()
        wait_until(lambda: node_exists(zk, node), 11, interval=0.01, what="registration")
        appeared = time.monotonic() - started
        flag.unlink()
        started = time.monotonic()
        wait_until(lambda: not node_exists(zk, node), 11, interval=0.01, what="deregistration")
        timings.append((appeared, time.monotonic() - started))
    print(f"appear/disappear seconds: {timings}")
    assert "overflow" not in server.log_text()
    assert server.info("zkwatcher")["statename"] == "RUNNING"


def test_supervisorctl_stop_removes_nodes_before_the_listener_exits(
        write_config, supervisord, zk, base_path, tmp_path):
    (tmp_path / "up").touch()
    config = write_config(section(base_path, "flag", 9000, cmd=f"test -f {tmp_path / 'up'}",
                                  refresh=5, timeout=None))
    server = supervisord(listener_section(config))
    node = f"{base_path}/flag/host1:9000"
    wait_until(lambda: node_exists(zk, node), 10, what="registration")
    result = server.ctl("stop", "zkwatcher")
    assert "zkwatcher: stopped" in result.stdout, result
    # supervisorctl returns once the process has exited; the node must already be gone.
    assert not node_exists(zk, node)
    assert server.info("zkwatcher")["exitstatus"] == 0


def test_sigterm_removes_nodes_before_the_listener_exits(
        write_config, supervisord, zk, base_path, tmp_path):
    (tmp_path / "up").touch()
    config = write_config(section(base_path, "flag", 9000, cmd=f"test -f {tmp_path / 'up'}",
                                  refresh=5, timeout=None))
    server = supervisord(listener_section(config, extra="autorestart = false\n"))
    node = f"{base_path}/flag/host1:9000"
    wait_until(lambda: node_exists(zk, node), 10, what="registration")
    pid = server.info("zkwatcher")["pid"]
    pidfd = os.pidfd_open(pid)
    started = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    assert select.select([pidfd], [], [], 5)[0], "listener did not exit"
    exited = time.monotonic() - started
    assert not node_exists(zk, node)  # checked right after the exit became visible
    os.close(pidfd)
    assert exited < 1.0, exited
    wait_until(lambda: server.info("zkwatcher")["statename"] == "EXITED", 5, what="EXITED")
    assert server.info("zkwatcher")["exitstatus"] == 0
