"""What the listener logs, and where (-v, syslog).  The log stays readable and
bounded when things go wrong: a ZooKeeper outage is a handful of lines whatever its
length, and a log that stops taking lines costs dropped lines (counted), never a
stalled listener or unbounded memory."""

from __future__ import annotations

import os
import re
import signal
import threading
import time

import pytest
from kazoo.client import KazooClient
from support.sections import listener_section, section
from support.watches import node_exists

from zkwatcher_supervisor.logs import LogWriter
from zkwatcher_supervisor.testing import FaultProxy, LocalZooKeeper, wait_until

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "


@pytest.fixture
def own_zookeeper(tmp_path):
    """A ZooKeeper of this test's own, free to be killed and restarted."""
    server = LocalZooKeeper(tmp_path / "own-zk").start()
    yield server
    server.stop()


def log_lines(path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def without_stamp(line: str) -> str:
    assert re.match(STAMP, line), f"not a log line: {line!r}"
    return line[24:]


@pytest.mark.e2e
@pytest.mark.parametrize("how", ["kill", "cut"])
def test_zookeeper_away_20s_is_a_handful_of_lines(
        how, own_zookeeper, write_config, supervisord, base_path, tmp_path):
    """ZooKeeper away for 20 s under a real supervisord: ``kill`` stops the
    server (restarted on its data, the session lives), ``cut`` drops the
    connections and refuses new ones while the server runs (it expires the
    session).  kazoo warns on every reconnect attempt (about 40 in 20 s); the
    log gets only:

    * kazoo's first warning of each kind (at most 3 kinds: the drop, and the
      refusals of the reconnect attempts),
    * ``ZooKeeper connection suspended; 2 node(s) stay ...`` (the loss),
    * with ``cut`` only: ``ZooKeeper session lost; ...`` (the expiry, learnt on reconnecting),
    * ``reconnected to ZooKeeper after 2x s away; ...`` with the count of kazoo's
      repeats folded in (the recovery),
    * with ``cut`` only: ``registered ...`` for each of the 2 nodes (new session).
    """
    proxy = FaultProxy(own_zookeeper.port) if how == "cut" else None
    zk = KazooClient(hosts=own_zookeeper.hosts, timeout=10)
    try:
        config = write_config(section(base_path, "a", 1, cmd="true", timeout=None)
                              + section(base_path, "b", 2, cmd="true", timeout=None),
                              hosts=proxy.hosts if proxy else own_zookeeper.hosts,
                              session_timeout=10)
        server = supervisord(listener_section(config))
        log = config.parent / "zkwatcher.log"
        nodes = [f"{base_path}/a/host1:1", f"{base_path}/b/host1:2"]
        zk.start(timeout=30)
        wait_until(lambda: all(node_exists(zk, n) for n in nodes), 15, what="registration")
        wait_until(lambda: sum("registered" in line for line in log_lines(log)) == 2, 5,
                   what="registrations logged")
        before = [zk.exists(n) for n in nodes]
        pid = server.info("zkwatcher")["pid"]
        zk.stop()
        seen = len(log_lines(log))

        if proxy:
            proxy.cut()
        else:
            own_zookeeper.kill()
        time.sleep(20)  # the outage itself
        if proxy:
            proxy.restore()
        else:
            own_zookeeper.start()
        zk.start(timeout=30)
        wait_until(lambda: all(node_exists(zk, n) for n in nodes), 15, interval=0.05,
                   what="nodes back")
        wait_until(lambda: any("connected to ZooKeeper" in line
                               for line in log_lines(log)[seen:]), 5, what="recovery logged")
        after = [zk.exists(n) for n in nodes]
        if how == "kill":
            assert [s.czxid for s in after] == [s.czxid for s in before]  # never went
        else:
            wait_until(lambda: sum("registered" in line for line in log_lines(log)) == 4, 5,
                       what="re-registrations logged")
            assert all(a.ephemeralOwner != b.ephemeralOwner for a, b in zip(after, before))
        time.sleep(2)  # anything the recovery would still log
        new = [without_stamp(line) for line in log_lines(log)[seen:]]
        print(f"{len(new)} new lines:\n" + "\n".join(new))

        kazoo = [line for line in new if line.startswith("WARNING Connection dropped: ")]
        ours = [line for line in new if line not in kazoo]
        assert 1 <= len(kazoo) <= 3 and len(set(kazoo)) == len(kazoo), kazoo
        expected = [r"WARNING ZooKeeper connection suspended; 2 node\(s\) stay while the "
                    r"session lives \(session_timeout 10 s\)"]
        if how == "cut":
            expected.append(r"WARNING ZooKeeper session lost; will reconnect in .*")
        expected.append(r"INFO reconnected to ZooKeeper after \d+\.\d s away; "
                        + (r"the session lived: 2 node\(s\) kept" if how == "kill"
                           else r"a new session: registering 2 node\(s\)")
                        + r"; kazoo repeated 'Connection dropped: .*")
        registered = ({f"INFO registered {node}" for node in nodes} if how == "cut" else set())
        assert len(ours) == len(expected) + len(registered), ours
        for line, pattern in zip(ours, expected):
            assert re.fullmatch(pattern, line), (line, pattern)
        assert set(ours[len(expected):]) == registered
        recovery = ours[len(expected) - 1]
        away = float(re.search(r"after (\d+\.\d) s away", recovery).group(1))
        assert 20 <= away < 60  # the server's own restart is part of a killed one's outage
        repeats = [int(n) for n in re.findall(r"' (\d+) times?", recovery)]
        assert sum(repeats) >= 10, recovery  # kazoo's retries were counted, not shown
        assert server.info("zkwatcher")["pid"] == pid
    finally:
        zk.stop()
        zk.close()
        if proxy:
            proxy.close()


RUNNING = "processname:web groupname:web from_state:STARTING pid:0"
EXITED = "processname:web groupname:web from_state:RUNNING expected:0 pid:0"


@pytest.mark.e2e
def test_a_blocked_log_drops_lines_and_never_stalls_the_listener(
        write_config, driver, zk, base_path):
    """The listener's stderr is a pipe nobody reads: once the pipe is full, the
    log writer blocks.  Thousands of events, each logging, still get their
    answers at once; the lines beyond the queue's bound are dropped, and when
    the pipe is read again one line says how many."""
    config = write_config(f"""
        [web]
        program = web
        service_port = 1
        service_hostname = host1
        zookeeper_path = {base_path}/web
        """)
    drv = driver(config, args=("-v",), stderr_pipe=True)
    events = 2 * LogWriter.LIMIT  # each logs a line or more: far more than queue + pipe hold
    answers = []
    for i in range(events):
        answers.append(drv.send("PROCESS_STATE_RUNNING" if i % 2 == 0 else "PROCESS_STATE_EXITED",
                                RUNNING if i % 2 == 0 else EXITED))
    answers.sort()
    print(f"{events} events while the log was blocked: answered in median "
          f"{answers[len(answers) // 2] * 1000:.2f} ms, max {answers[-1] * 1000:.1f} ms")
    assert answers[-1] < 1.0

    read: list[bytes] = []
    reader = threading.Thread(target=lambda: read.extend(iter(
        lambda: drv.process.stderr.read1(65536), b"")), daemon=True)
    reader.start()

    def dropped():
        found = re.search(rb"WARNING dropped (\d+) log records while the log was blocked",
                          b"".join(read))
        return int(found.group(1)) if found else None

    count = wait_until(dropped, 30, what="the 'dropped' line")
    print(f"dropped {count} records")
    assert count >= events - LogWriter.LIMIT - 2000
    # Logging as before: the next event's line comes after the "dropped" line.
    drv.send("PROCESS_STATE_RUNNING", RUNNING)
    wait_until(lambda: b"[web] healthy: registering" in b"".join(read).split(
        b"log records while the log was blocked", 1)[1], 10, what="the next line logged")
    wait_until(lambda: node_exists(zk, f"{base_path}/web/host1:1"), 10,
               what="registered after the flood")
    assert drv.process.poll() is None


@pytest.mark.e2e
def test_a_listener_whose_log_is_blocked_still_stops(write_config, driver, base_path):
    """SIGTERM while nobody reads stderr: the lines that cannot be written are
    given up after a few seconds, and the listener exits 0 as always."""
    config = write_config(f"""
        [web]
        program = web
        service_port = 1
        service_hostname = host1
        zookeeper_path = {base_path}/web
        """)
    drv = driver(config, args=("-v",), stderr_pipe=True)
    for i in range(LogWriter.LIMIT):  # the pipe is full long before
        drv.send("PROCESS_STATE_RUNNING" if i % 2 == 0 else "PROCESS_STATE_EXITED",
                 RUNNING if i % 2 == 0 else EXITED)
    drv.process.send_signal(signal.SIGTERM)
    started = time.monotonic()
    assert drv.process.wait(15) == 0
    print(f"exited {time.monotonic() - started:.1f} s after SIGTERM")


@pytest.mark.e2e
def test_verbose_still_shows_every_reconnect_attempt(zookeeper, zk, write_config, driver,
                                                     base_path):
    proxy = FaultProxy(zookeeper.port)
    try:
        drv = driver(write_config(section(base_path, "a", 1, cmd="true", timeout=None),
                                  hosts=proxy.hosts), args=("-v",))
        wait_until(lambda: node_exists(zk, f"{base_path}/a/host1:1"), 10, what="registration")
        proxy.cut()
        wait_until(lambda: drv.stderr().count("WARNING Connection dropped: ") >= 5, 15,
                   what="five of kazoo's warnings, each shown")
        assert "Transition to CONNECTING" in drv.stderr()
        proxy.restore()
        wait_until(lambda: drv.stderr().count("connected to ZooKeeper") == 2, 10,
                   what="recovery")
        recovery = [line for line in drv.stderr().splitlines()
                    if "connected to ZooKeeper" in line][-1]
        assert "kazoo repeated" not in recovery  # nothing was held back
    finally:
        proxy.close()


@pytest.mark.e2e
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


@pytest.mark.e2e
def test_a_pass_that_makes_a_section_healthy_is_one_line(write_config, supervisord, zk,
                                                         base_path, tmp_path):
    """At start-up a thousand sections are a thousand "healthy: registering"
    lines, not one more "check passed" each; a pass that registers nothing (the
    section is drained) still says "check passed"."""
    flag = tmp_path / "flag"
    config = write_config(section(base_path, "a", 1, cmd="true")
                          + section(base_path, "b", 2, cmd=f"test -e {flag}")
                          + section(base_path, "c", 3, cmd="true", start_drained="true"))
    supervisord(listener_section(config))
    log = config.parent / "zkwatcher.log"
    a, b = f"{base_path}/a/host1:1", f"{base_path}/b/host1:2"
    wait_until(lambda: node_exists(zk, a), 10, what="a registered")
    wait_until(lambda: any("[c] check passed" in line for line in log_lines(log)), 5,
               what="c's pass logged")
    flag.touch()
    wait_until(lambda: node_exists(zk, b), 10, what="b registered")
    wait_until(lambda: sum(" registered " in line for line in log_lines(log)) == 2, 5,
               what="both registrations logged")
    lines = [without_stamp(line) for line in log_lines(log)]
    ours = [line for line in lines if re.match(r"\w+ \[[abc]\] ", line)]
    print("\n".join(ours))
    assert ours.count(f"INFO [a] healthy: registering {a}") == 1
    assert ours.count("INFO [c] check passed") == 1
    assert ours.count(f"INFO [b] healthy: registering {b}") == 1
    assert ours.count("INFO [b] check passed") == 0
    assert any(line.startswith("WARNING [b] check failed: exit status 1") for line in ours)
    assert not any(line.startswith(("INFO [a] check passed", "INFO [c] healthy"))
                   for line in ours)
