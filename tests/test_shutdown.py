"""Shutdown (SIGTERM, SIGINT, EOF, supervisorctl stop): every node removed before the
listener exits 0, promptly, whatever ZooKeeper or the start-up is doing.  Real
supervisord or the byte-exact protocol driver, real ZooKeeper."""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
import time

import pytest
from support.driver import ProtocolDriver, Ticker, terminate, tick_until
from support.proxies import ZooKeeperLink
from support.sections import listener_section, section
from support.watches import NodeWatch, node_exists

from zkwatcher_supervisor.testing import FaultProxy, wait_until

pytestmark = pytest.mark.e2e


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


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "EOF"])
def test_shutdown_removes_every_node_and_exits_0_within_1s(
        how, write_config, driver, zk, base_path):
    config = write_config(section(base_path, "a", 1, cmd="true", timeout=1)
                          + section(base_path, "b", 2, cmd="true", timeout=1))
    drv = driver(config)
    nodes = [f"{base_path}/a/host1:1", f"{base_path}/b/host1:2"]
    tick_until(drv, lambda: all(node_exists(zk, n) for n in nodes), 5, "registration")
    started = time.monotonic()
    if how == "EOF":
        drv.close_stdin()
    else:
        drv.process.send_signal(getattr(signal, how))
    assert drv.process.wait(5) == 0
    elapsed = time.monotonic() - started
    assert not any(node_exists(zk, n) for n in nodes)
    assert elapsed < 1.0, elapsed


@pytest.mark.parametrize("fault", ["refused", "blackholed"])
def test_sigterm_while_zookeeper_is_unreachable_exits_0_within_1s(
        fault, write_config, driver, zk, zookeeper, base_path):
    """Registered, then ZooKeeper becomes unreachable — ``refused``: connections are
    dropped and new ones refused; ``blackholed``: the connection stays open but nothing
    gets through, as in a network partition.  SIGTERM must still end the listener with
    status 0 within 1 s."""
    proxy = FaultProxy(zookeeper.port) if fault == "refused" else ZooKeeperLink(zookeeper.port)
    try:
        drv = driver(write_config(section(base_path, "svc", 1, cmd="true"), hosts=proxy.hosts))
        node = f"{base_path}/svc/host1:1"
        with Ticker(drv):
            wait_until(lambda: node_exists(zk, node), 10, what="registration")
            if fault == "refused":
                proxy.cut()
            else:
                proxy.stall()
            time.sleep(1.0)  # checks go on; the listener may or may not have noticed yet
        status, elapsed = terminate(drv)
        print(f"SIGTERM -> exit with ZooKeeper {fault}: {elapsed:.2f}s")
        assert status == 0, drv.stderr()[-2000:]
        assert elapsed < 1.0, elapsed
    finally:
        proxy.close()


def test_sigterm_with_a_registration_in_flight_over_a_slow_link_removes_every_node(
        write_config, driver, zk, zookeeper, base_path, tmp_path):
    """ZooKeeper is slow to answer (0.3 s each way).  Section [a] is registered; section
    [b] has just turned healthy and its create is on the wire when SIGTERM arrives.
    1.5 s later neither node may exist — deleted, or removed by closing the session,
    not left for the 4 s session timeout — and the listener must have exited 0 within
    1 s."""
    link = ZooKeeperLink(zookeeper.port, delay=0.3)
    flag = tmp_path / "b-up"
    try:
        drv = driver(write_config(section(base_path, "a", 1, cmd="true")
                                  + section(base_path, "b", 2, cmd=f"test -f {flag}"),
                                  hosts=link.hosts, session_timeout=4))
        node_a, node_b = f"{base_path}/a/host1:1", f"{base_path}/b/host1:2"
        zk.ensure_path(f"{base_path}/b")  # so b's create is a single request
        watch_a, watch_b = NodeWatch(zk, node_a), NodeWatch(zk, node_b)
        with Ticker(drv):
            assert watch_a.wait_for("CREATED", 0, 15), "a never registered"
            time.sleep(1.0)
            touched = time.monotonic()
            flag.touch()
            # The moment the listener sends b's create: it reaches the server in 0.3 s.
            wait_until(lambda: [t for t, op in link.requests if op in (1, 15) and t > touched],
                       10, interval=0.001, what="b's create sent")
            started = time.monotonic()
            drv.process.terminate()
        status = drv.process.wait(10)
        exited = time.monotonic() - started
        time.sleep(max(0.0, started + 1.5 - time.monotonic()))
        left = [n for n in (node_a, node_b) if node_exists(zk, n)]
        gone = [w.wait_for("DELETED", started, 6) for w in (watch_a, watch_b)]
        took = [round(g - started, 2) if g else None for g in gone]
        print(f"SIGTERM -> exit {exited:.2f}s, nodes a, b deleted after {took} s")
        assert status == 0, drv.stderr()[-2000:]
        assert left == [], f"{left} still registered 1.5 s after SIGTERM (deleted after {took} s)"
        assert exited < 1.0, exited
    finally:
        link.close()


def test_sigterm_during_the_startup_process_snapshot_exits_promptly_and_cleanly(
        write_config, base_path):
    """supervisord's XML-RPC accepts the connection but never answers (a wedged
    supervisord).  SIGTERM while the listener waits for that start-up snapshot must end
    it within 1 s, with status 0 and no traceback in its log."""
    silent = socket.create_server(("127.0.0.1", 0))
    cfg = write_config(section(base_path, "web", 1, program="web"))
    drv = ProtocolDriver(cfg, env={
        "SUPERVISOR_SERVER_URL": f"http://127.0.0.1:{silent.getsockname()[1]}"})
    try:
        silent.settimeout(10)
        conn, _ = silent.accept()  # the listener is now waiting for its answer
        time.sleep(0.3)
        status, elapsed = terminate(drv)
        print(f"SIGTERM during the start-up snapshot -> exit {elapsed:.2f}s, status {status}")
        stderr = drv.stderr()
        assert "Traceback" not in stderr, stderr
        assert status == 0, stderr
        assert elapsed < 1.0, elapsed
        conn.close()
    finally:
        drv.stop()
        silent.close()


# The listener with one bug of ours planted: a thread that dies while the
# registry shuts down (after the event loop has ended).
_FAILS_WHILE_STOPPING = """
import sys, threading
from zkwatcher_supervisor import registry
from zkwatcher_supervisor.cli import main

stop = registry.Registry.stop

def failing_stop(self, *args, **kwargs):
    def bug():
        raise RuntimeError("planted bug")
    thread = threading.Thread(target=bug, name="planted")
    thread.start()
    thread.join()
    return stop(self, *args, **kwargs)

registry.Registry.stop = failing_stop
sys.exit(main())
"""


def test_a_thread_that_fails_while_stopping_makes_the_exit_status_1(
        write_config, zk, base_path, tmp_path):
    """Crash-only holds to the end: a thread of ours that dies after SIGTERM has
    ended the event loop still makes the exit status 1, not 0."""
    config = write_config(section(base_path, "svc", 1, cmd="true"))
    drv = ProtocolDriver(config, command=(sys.executable, "-c", _FAILS_WHILE_STOPPING))
    try:
        drv.wait_ready()
        wait_until(lambda: node_exists(zk, f"{base_path}/svc/host1:1"), 10, what="registered")
        status, _ = terminate(drv)
        assert status == 1, drv.stderr()
        assert "thread planted failed" in drv.stderr()
        assert "a thread failed while stopping (RuntimeError('planted bug'))" in drv.stderr()
        assert not node_exists(zk, f"{base_path}/svc/host1:1")  # the stop still went on
    finally:
        drv.stop()
