"""Hand-over restarts (SIGUSR2 / ``handoff``) and crash restarts keep every
node: the successor reattaches to the saved ZooKeeper session.  Real
supervisord, real ZooKeeper; consumers are kazoo watches on every node."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from conftest import listener_section, node_exists
from kazoo.client import KazooClient

from zkwatcher_supervisor.sandbox import wait_until

pytestmark = pytest.mark.e2e

HANDOVER_LISTENER = "autorestart = true\n"


def sections(base_path, count, program=None):
    text = ""
    for i in range(count):
        text += textwrap.dedent(f"""
            [s{i}]
            cmd = true
            refresh = 5
            service_port = {i + 1}
            service_hostname = host1
            zookeeper_path = {base_path}/s{i}
            """)
    if program:
        text += textwrap.dedent(f"""
            [prog]
            program = {program}
            service_port = 9999
            service_hostname = host1
            zookeeper_path = {base_path}/prog
            """)
    return text


class EveryEvent:
    """Records every watch event any node fires: a consumer that sees all."""

    def __init__(self, zk: KazooClient, paths: list[str]) -> None:
        self.events: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self.zk = zk
        for path in paths:
            self._watch(path)

    def _watch(self, path: str) -> None:
        def fired(event):
            with self._lock:
                self.events.append((event.type, event.path))
            self._watch(path)

        self.zk.exists(path, watch=fired)


def listener_pid(server):
    info = server.info("zkwatcher")
    return info["pid"] if info["statename"] == "RUNNING" else 0


def signal_listener(server, signum):
    pid = wait_until(lambda: listener_pid(server), 10, what="listener running")
    os.kill(pid, signum)  # never pid 0: that would signal our own process group
    return pid


def wait_for_successor(server, old_pid, timeout=10):
    return wait_until(lambda: (pid := listener_pid(server)) not in (0, old_pid) and pid,
                      timeout, interval=0.02, what="successor running")


def test_sigusr2_hands_50_nodes_over_without_any_event(
        write_config, supervisord, zk, zookeeper, base_path):
    config = write_config(sections(base_path, 50), session_timeout=10)
    server = supervisord(listener_section(config, extra=HANDOVER_LISTENER))
    nodes = [f"{base_path}/s{i}/host1:{i + 1}" for i in range(50)]
    wait_until(lambda: all(node_exists(zk, n) for n in nodes), 20, what="all registered")
    before = {n: zk.exists(n) for n in nodes}
    # The hand-over has to fit in the session.
    assert zookeeper.session_timeouts()[before[nodes[0]].ephemeralOwner] == 10000
    consumer = EveryEvent(zk, nodes)
    old = signal_listener(server, signal.SIGUSR2)
    stopped = time.monotonic()
    new = wait_for_successor(server, old)
    log = config.parent / "zkwatcher.log"
    wait_until(lambda: "reattached to session" in log.read_text(), 5, what="reattached")
    print(f"hand-over gap (signal -> successor reattached): "
          f"{time.monotonic() - stopped:.2f}s")
    # The successor's first check of every section has passed and been applied.
    wait_until(lambda: log.read_text().rsplit("watching ", 1)[1].count("check passed") >= 50,
               10, what="the successor's first checks")
    assert consumer.events == []
    for n in nodes:
        stat = zk.exists(n)
        assert (stat.czxid, stat.mzxid, stat.ephemeralOwner) == \
            (before[n].czxid, before[n].mzxid, before[n].ephemeralOwner), n
    assert new != old


def test_successor_deregisters_what_changed_during_the_hand_over(
        write_config, supervisord, zk, base_path):
    config = write_config(sections(base_path, 2, program="web"), session_timeout=10)
    server = supervisord(textwrap.dedent("""
        [program:web]
        command = sleep 100000
        startsecs = 0
        stopsignal = KILL
        """) + listener_section(config, extra=HANDOVER_LISTENER))
    node = f"{base_path}/prog/host1:9999"
    wait_until(lambda: node_exists(zk, node), 20, what="web registered")
    old = signal_listener(server, signal.SIGUSR2)
    wait_until(lambda: listener_pid(server) != old, 10, what="old listener gone")
    server.ctl("stop", "web")  # while no listener runs, or the successor is starting
    wait_for_successor(server, old)
    started = time.monotonic()
    wait_until(lambda: not node_exists(zk, node), 1, interval=0.01, what="deregistered")
    print(f"successor start -> stopped program deregistered: "
          f"{time.monotonic() - started:.2f}s")
    assert node_exists(zk, f"{base_path}/s0/host1:1")
    log = config.parent / "zkwatcher.log"

    def successor_deleted() -> bool:
        successor = log.read_text().split("handing over session", 1)[1]
        return f"deregistered {node}" in successor or f"deleting {node}" in successor

    wait_until(successor_deleted, 5, what="the successor's deletion logged")


def test_without_a_successor_the_nodes_go_with_the_session(
        write_config, supervisord, zk, base_path):
    config = write_config(sections(base_path, 1), session_timeout=4)
    server = supervisord(listener_section(config, extra="autorestart = false\n"))
    node = f"{base_path}/s0/host1:1"
    wait_until(lambda: node_exists(zk, node), 20, what="registered")
    signal_listener(server, signal.SIGUSR2)
    wait_until(lambda: server.info("zkwatcher")["statename"] == "EXITED", 5, what="exited")
    exited = time.monotonic()
    assert server.info("zkwatcher")["exitstatus"] == 0
    assert node_exists(zk, node)  # left for a successor ...
    wait_until(lambda: not node_exists(zk, node), 4 + 3, interval=0.05, what="expired")
    print(f"no successor: node gone {time.monotonic() - exited:.1f}s after the exit "
          "(session timeout 4 s)")


def test_handoff_command_repeated_20_times_without_a_flap(
        write_config, supervisord, zk, base_path):
    config = write_config(sections(base_path, 3), session_timeout=10)
    server = supervisord(listener_section(config, extra=HANDOVER_LISTENER))
    nodes = [f"{base_path}/s{i}/host1:{i + 1}" for i in range(3)]
    wait_until(lambda: all(node_exists(zk, n) for n in nodes), 20, what="all registered")
    before = {n: zk.exists(n).czxid for n in nodes}
    consumer = EveryEvent(zk, nodes)
    env = {**os.environ, "SUPERVISOR_SERVER_URL": f"unix://{server.workdir}/supervisor.sock"}
    pids = {wait_until(lambda: listener_pid(server), 10, what="listener running")}
    for _ in range(20):
        result = subprocess.run(
            [sys.executable, "-m", "zkwatcher_supervisor", "handoff", "-c", str(config)],
            capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("handed over: pid ")
        pids.add(listener_pid(server))
    time.sleep(1)
    assert len(pids) == 21
    assert consumer.events == []
    assert {n: zk.exists(n).czxid for n in nodes} == before


def test_hand_over_of_a_rise_2_section_shows_consumers_nothing(
        write_config, supervisord, zk, base_path):
    """The successor's first pass is not yet a verdict with rise = 2: the
    reattached node is kept until the check has decided."""
    config = write_config(textwrap.dedent(f"""
        [s0]
        cmd = true
        refresh = 2
        rise = 2
        service_port = 1
        service_hostname = host1
        zookeeper_path = {base_path}/s0
        """), session_timeout=10)
    server = supervisord(listener_section(config, extra=HANDOVER_LISTENER))
    node = f"{base_path}/s0/host1:1"
    wait_until(lambda: node_exists(zk, node), 20, what="registered")
    consumer = EveryEvent(zk, [node])
    old = signal_listener(server, signal.SIGUSR2)
    wait_for_successor(server, old)
    time.sleep(5)  # two check runs: rise reached
    assert consumer.events == []
