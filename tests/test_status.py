"""What an operator reads, against real ZooKeeper and supervisord servers: the
status command and file, and Prometheus metrics."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.sections import listener_section, web_program
from support.sections import section as config_section
from support.watches import node_exists

from zkwatcher_supervisor.status import process_alive
from zkwatcher_supervisor.testing import free_port, wait_until

pytestmark = pytest.mark.e2e


def status(config):
    return subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "status", "-c",
                           str(config)], capture_output=True, text=True, timeout=60)


def test_status_shows_each_section_and_exits_0_only_when_consistent(
        write_config, supervisord, zk, base_path, tmp_path):
    port = free_port()
    flag = tmp_path / "flag"
    config = write_config(
        config_section(base_path, "web", port, program="web",
                       cmd=f"http://127.0.0.1:{port}/", refresh=5, timeout=None)
        + config_section(base_path, "flag", 9, cmd=f"test -f {flag}", refresh=5, timeout=None),
        settings=f"status_file = {tmp_path}/status.json\n")
    server = supervisord(web_program(port)
                         + listener_section(config, extra="autorestart = false\n"))
    web_node = f"{base_path}/web/host1:{port}"
    wait_until(lambda: node_exists(zk, web_node), 20, what="web registered")
    # Consistent once the flag's first check has failed and been published.
    result = wait_until(lambda: (r := status(config)).returncode == 0
                        and "check FAIL" in r.stdout and r, 10, interval=0.2,
                        what="status with both checks run")
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"listener: pid {server.info('zkwatcher')['pid']}, "
                               "ZooKeeper connected")
    assert lines[1].startswith(f"ok   [web] {web_node} registered, healthy; web:web=RUNNING; "
                               "check pass")
    assert lines[2].startswith(f"ok   [flag] {base_path}/flag/host1:9 not registered, "
                               "unhealthy; check FAIL")
    assert "exit status 1" in lines[2]

    # Someone else's node where an unhealthy section would register: inconsistent.
    zk.create(f"{base_path}/flag/host1:9", b"not ours", makepath=True)
    result = status(config)
    assert result.returncode == 1, result.stdout
    assert result.stdout.splitlines()[2].startswith("BAD  [flag]"), result.stdout
    zk.delete(f"{base_path}/flag/host1:9")

    # The listener dies: its pid is gone, so nothing can be vouched for.
    pid = server.info("zkwatcher")["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not process_alive(pid), 5, what="listener gone")
    result = status(config)
    assert result.returncode == 1, result.stdout
    assert result.stdout.splitlines()[0].startswith("listener: pid ")
    assert " is gone; status from " in result.stdout.splitlines()[0]


def test_status_exits_1_when_checks_are_overdue(write_config, driver, zk, base_path, tmp_path):
    """A listener that stops making progress (here: SIGSTOPped) shows up in
    ``status`` once its checks are overdue: refresh + 5 s + timeout."""
    config = write_config(f"""
        [svc]
        cmd = true
        refresh = 1
        timeout = 1
        service_port = 1
        service_hostname = host1
        zookeeper_path = {base_path}/svc
        """, settings=f"status_file = {tmp_path}/status.json\n", session_timeout=10)
    drv = driver(config)
    wait_until(lambda: node_exists(zk, f"{base_path}/svc/host1:1"), 5, what="registered")
    time.sleep(1)
    assert status(config).returncode == 0
    drv.process.send_signal(signal.SIGSTOP)
    try:
        time.sleep(1 + 5 + 1 + 1.5)
        result = status(config)
    finally:
        drv.process.send_signal(signal.SIGCONT)
    assert result.returncode == 1, result.stdout
    assert "check OVERDUE" in result.stdout
    wait_until(lambda: status(config).returncode == 0, 5, interval=0.5, what="recovered")


def test_default_status_file_heartbeat_and_a_healthy_section_without_its_node(
        write_config, driver, zk, base_path, tmp_path):
    """No ``status_file``: the listener publishes to the default path in its
    private state directory (the one ``--check-config`` prints), rewrites it at
    least every 10 s while nothing changes, and ``status`` exits 1 when a healthy
    section's node is missing."""
    config = write_config(f"""
        [svc]
        cmd = true
        refresh = 30
        service_port = 1
        service_hostname = host1
        zookeeper_path = {base_path}/svc
        """, session_timeout=10)
    digest = hashlib.sha256(os.path.abspath(config).encode()).hexdigest()[:12]
    expected = os.path.join("/run/zkwatcher-supervisor", f"status-{digest}.json")
    printed = subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "-c", str(config),
                              "--check-config"], capture_output=True, text=True, timeout=60)
    assert f"status file {expected}" in printed.stdout, printed.stdout
    try:
        drv = driver(config)
        node = f"{base_path}/svc/host1:1"
        wait_until(lambda: node_exists(zk, node), 10, what="registered")
        wait_until(lambda: status(config).returncode == 0, 5, interval=0.2, what="status ok")

        def updated():
            with open(expected) as handle:
                return json.load(handle)["updated"]

        # Private: nobody else can forge what ``status`` reports.
        assert os.stat(os.path.dirname(expected)).st_mode & 0o022 == 0
        assert os.stat(expected).st_mode & 0o022 == 0
        first = updated()
        second = wait_until(lambda: (u := updated()) != first and u, 10 + 2, interval=0.2,
                            what="a heartbeat write")
        assert second - first <= 10 + 1  # nothing changed in between: the heartbeat

        drv.process.send_signal(signal.SIGSTOP)  # cannot put the node back for now
        try:
            zk.delete(node)
            result = status(config)
        finally:
            drv.process.send_signal(signal.SIGCONT)
        assert result.returncode == 1, result.stdout
        assert result.stdout.splitlines()[1].startswith(
            f"BAD  [svc] {node} not registered, healthy"), result.stdout
        wait_until(lambda: node_exists(zk, node), 5, what="node back")
        wait_until(lambda: status(config).returncode == 0, 5, interval=0.2, what="status ok")
    finally:
        if os.path.exists(expected):
            os.unlink(expected)


def test_prometheus_metrics(write_config, driver, zk, base_path, tmp_path):
    port = free_port()
    flag = tmp_path / "flip-up"
    flag.touch()
    config = write_config(
        config_section(base_path, "up", 1, cmd="true", refresh=None, timeout=None)
        + config_section(base_path, "flip", 2, cmd=f"test -f {flag}", timeout=None),
        settings=f"metrics_port = {port}\n")
    driver(config)
    flip_node = f"{base_path}/flip/host1:2"
    wait_until(lambda: node_exists(zk, f"{base_path}/up/host1:1") and node_exists(zk, flip_node),
               10, what="registration")

    def scrape():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for family in text_string_to_metric_families(text) for s in family.samples}

    def section(name, value):
        return (name, (("section", value),))

    samples = wait_until(lambda: (s := scrape()) and
                         s.get(section("zkwatcher_section_registered", "flip")) and s, 5)
    assert samples[section("zkwatcher_section_up", "up")] == 1
    assert samples[section("zkwatcher_section_up", "flip")] == 1
    assert samples[section("zkwatcher_section_registered", "up")] == 1
    assert 0 < samples[section("zkwatcher_check_duration_seconds", "up")] < 2
    assert samples[("zkwatcher_registrations_total", ())] == 2
    assert samples[("zkwatcher_deregistrations_total", ())] == 0
    assert samples[("zkwatcher_zookeeper_connected", ())] == 1
    assert samples[("zkwatcher_zookeeper_reconnects_total", ())] == 0

    flag.unlink()
    wait_until(lambda: not node_exists(zk, flip_node), 1 + 2, what="flip deregistered")
    samples = wait_until(lambda: (s := scrape()) and
                         s.get(("zkwatcher_deregistrations_total", ())) and s, 5)
    assert samples[("zkwatcher_deregistrations_total", ())] == 1
    assert samples[("zkwatcher_registrations_total", ())] == 2
    assert samples[section("zkwatcher_section_up", "flip")] == 0
    assert samples[section("zkwatcher_section_registered", "flip")] == 0
    assert samples[section("zkwatcher_section_up", "up")] == 1
