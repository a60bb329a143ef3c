"""The listener speaking the supervisord protocol byte for byte, against a real ZooKeeper.

Each test drives the listener process over pipes exactly as supervisord would,
so it can measure how quickly every event is answered and assert that nothing
but protocol text ever reaches stdout.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from support.driver import tick_until
from support.sections import section
from support.watches import node_exists

from zkwatcher_supervisor.testing import wait_until

pytestmark = pytest.mark.e2e


def test_node_follows_check_with_exact_path_and_payload(
        write_config, driver, zk, base_path, tmp_path):
    flag = tmp_path / "up"
    config = write_config(section(base_path, "svc", 8080, cmd=f"test -f {flag}", timeout=1,
                                  zookeeper_data="weight=10, zone = a "))
    drv = driver(config)
    node = f"{base_path}/svc/host1:8080"
    tick_until(drv, lambda: "[svc] check failed" in drv.stderr(), 5, "first check")
    assert not node_exists(zk, node)

    flag.touch()
    tick_until(drv, lambda: node_exists(zk, node), 5, "registration")
    data, stat = zk.get(node)
    assert stat.ephemeralOwner != 0
    payload = json.loads(data)
    assert data == json.dumps(payload, separators=(",", ":")).encode()
    assert payload["pid"] == drv.process.pid
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", payload["created"])
    assert payload == {"pid": drv.process.pid, "created": payload["created"],
                       "weight": "10", "zone": "a"}

    flag.unlink()
    tick_until(drv, lambda: not node_exists(zk, node), 5, "deregistration")


def test_hung_check_is_killed_with_its_children_and_events_keep_flowing(
        write_config, driver, zk, base_path, tmp_path):
    hang, child_pid = tmp_path / "hang", tmp_path / "child.pid"
    script = tmp_path / "check.sh"
    script.write_text(f"if [ -f {hang} ]; then sleep 300 & echo $! > {child_pid}; sleep 300; fi\n")
    config = write_config(section(base_path, "svc", 8080, cmd=f"sh {script}", timeout=1))
    drv = driver(config)
    node = f"{base_path}/svc/host1:8080"
    tick_until(drv, lambda: node_exists(zk, node), 5, "registration")

    hang.touch()
    time.sleep(1.0)
    drv.tick()  # starts the check that hangs
    wait_until(child_pid.exists, 5, what="hung check started")
    child = int(child_pid.read_text())
    answer_times = []
    started = time.monotonic()
    while node_exists(zk, node):
        assert time.monotonic() - started < 5, drv.stderr()
        answer_times.append(drv.tick())
        answer_times.append(drv.send(
            "PROCESS_STATE_RUNNING",
            "processname:other groupname:other from_state:STARTING pid:1"))
    # Every event was answered at once while the check hung.
    assert max(answer_times) < 0.5, answer_times  # README: under 0.5 s
    wait_until(lambda: "timed out after 1.0s" in drv.stderr(), 5, what="timeout logged")
    # The check's whole process group went, background child included.
    wait_until(lambda: not os.path.exists(f"/proc/{child}"), 2, what="child killed")


def test_check_writing_megabytes_neither_deadlocks_nor_leaks_to_stdout(
        write_config, driver, zk, base_path, tmp_path):
    script = tmp_path / "noisy.sh"
    script.write_text("head -c 1048576 /dev/zero | tr '\\0' o\n"
                      "head -c 1048576 /dev/zero | tr '\\0' e >&2\n")
    config = write_config(section(base_path, "svc", 8080, cmd=f"sh {script}", timeout=1))
    drv = driver(config)
    node = f"{base_path}/svc/host1:8080"
    tick_until(drv, lambda: node_exists(zk, node), 10, "registration")
    for _ in range(3):
        drv.tick()  # the driver fails on any byte that is not protocol text
        time.sleep(0.5)
    assert node_exists(zk, node)
    assert set(drv.transcript) == {b"READY\n", b"RESULT 2\nOK"}


def test_bad_config_exits_2_naming_the_key_and_never_connects(tmp_path):
    config = tmp_path / "bad.cfg"
    config.write_text("[web]\ncmd = true\nzookeeper_path = /services/web\n")
    trap = socket.create_server(("127.0.0.1", 0))
    trap.settimeout(0.5)
    port = trap.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "zkwatcher_supervisor", "-c", str(config),
         "-s", f"127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2
    assert result.stderr == (f"zkwatcher-supervisor: {config}: [web] service_port: "
                             "required key is missing\n")
    assert result.stdout == ""
    with pytest.raises(socket.timeout):
        trap.accept()  # nobody ever tried to reach "ZooKeeper"
    trap.close()


def test_check_config_prints_paths_and_payloads(tmp_path):
    config = tmp_path / "ok.cfg"
    config.write_text("[web]\ncmd = true\nservice_port = 80\nservice_hostname = w1\n"
                      "zookeeper_path = /services/web\nzookeeper_data = {\"weight\": 5}\n")
    result = subprocess.run(
        ["zkwatcher-supervisor", "-c", str(config), "--check-config"],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "zookeeper localhost:2181 session_timeout=10s"
    assert lines[1].startswith("status file /")
    name, path, payload = lines[2].split(" ", 2)
    assert (name, path) == ("[web]", "/services/web/w1:80")
    assert json.loads(payload)["weight"] == 5


def test_checks_keep_their_refresh_between_ticks(write_config, driver, zk, base_path, tmp_path):
    """No TICK at all: the listener's own timer runs each check every ``refresh`` seconds."""
    runs1, runs2 = tmp_path / "runs1", tmp_path / "runs2"
    config = write_config(
        section(base_path, "one", 8080, cmd=f"sh -c 'echo x >> {runs1}'", timeout=1)
        + section(base_path, "two", 8081, cmd=f"sh -c 'echo x >> {runs2}'", refresh=2,
                  timeout=1))
    drv = driver(config)
    wait_until(runs1.exists, 5, what="first run")
    started = time.monotonic()
    count1, count2 = len(runs1.read_text().split()), len(runs2.read_text().split())
    time.sleep(6.0)
    elapsed = time.monotonic() - started
    ran1 = len(runs1.read_text().split()) - count1
    ran2 = len(runs2.read_text().split()) - count2
    assert abs(ran1 - elapsed / 1) <= 1, (ran1, elapsed, drv.stderr())
    assert abs(ran2 - elapsed / 2) <= 1, (ran2, elapsed)
    assert node_exists(zk, f"{base_path}/one/host1:8080")
    assert drv.transcript == [b"READY\n"]  # all of it without a single event


# The listener with a bug planted in its event handling: what our own bugs do.
BUGGY_LISTENER = (sys.executable, "-c", """
import sys
from zkwatcher_supervisor import cli, listener
def handle_event(self, headers, payload):
    if headers.get("eventname") == "TICK_5":
        raise RuntimeError("a planted bug")
listener.Controller.handle_event = handle_event
sys.exit(cli.main(sys.argv[1:]))
""")


def test_unexpected_error_ends_the_listener_nonzero_and_deregisters(
        write_config, driver, zk, base_path):
    """Crash-only, for our own bugs: the listener exits 1 (supervisord restarts
    it) and closes its session on the way, so no node outlives it."""
    config = write_config(section(base_path, "svc", 8080, cmd="true", timeout=1))
    drv = driver(config, command=BUGGY_LISTENER)
    node = f"{base_path}/svc/host1:8080"
    wait_until(lambda: node_exists(zk, node), 5, what="registration")
    drv.process.stdin.write(b"ver:3.0 server:supervisor serial:1 eventname:TICK_5 len:0\n")
    drv.process.stdin.flush()
    assert drv.process.wait(5) == 1
    assert not node_exists(zk, node)  # gone with the session, not after its timeout
    assert "unexpected error" in drv.stderr() and "a planted bug" in drv.stderr()


def test_garbled_protocol_input_is_answered_and_dropped_not_fatal(
        write_config, driver, zk, base_path):
    """supervisord's stream is outside input too: a header we cannot read, or a
    payload too big to keep, is answered and dropped — never a crash, which
    would take every node down and make supervisord redeliver it for ever."""
    config = write_config(section(base_path, "svc", 8080, cmd="true", timeout=1))
    drv = driver(config)
    node = f"{base_path}/svc/host1:8080"
    wait_until(lambda: node_exists(zk, node), 5, what="registration")
    czxid = zk.exists(node).czxid
    for header, body in ((b"ver:3.0 eventname:TICK_5 len:x\n", b""),
                         (b"no colons at all\n", b""),
                         (b"ver:3.0 eventname:REMOTE_COMMUNICATION len:%d\n" % (3 << 20),
                          b"[" * (3 << 20)),
                         (b"ver:3.0 eventname:PROCESS_STATE_RUNNING len:9\n", b"\xff\xfe:::::::")):
        drv.process.stdin.write(header + body)
        drv.process.stdin.flush()
        drv._expect(b"RESULT 2\nOK", 10)
        drv.wait_ready()
    assert drv.tick() < 1.0  # still answering, at once
    assert drv.process.poll() is None
    assert zk.exists(node).czxid == czxid  # never deregistered
    log = wait_until(lambda: (text := drv.stderr()).count("dropped") >= 1 and text, 5)
    assert "header without a usable len" in log
    assert log.count("supervisord event dropped") == 1  # the rest within the minute: counted
