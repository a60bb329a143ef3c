"""Operator tools and interop, against real ZooKeeper and supervisord servers:
status, builtin tcp/http checks, payload formats, Prometheus metrics."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.sections import listener_section, web_program
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
    config = write_config(f"""
        [web]
        program = web
        cmd = http://127.0.0.1:{port}/
        refresh = 5
        service_port = {port}
        service_hostname = host1
        zookeeper_path = {base_path}/web

        [flag]
        cmd = test -f {flag}
        refresh = 5
        service_port = 9
        service_hostname = host1
        zookeeper_path = {base_path}/flag
        """, settings=f"status_file = {tmp_path}/status.json\n")
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


def test_tcp_and_http_checks_follow_a_real_server(write_config, supervisord, zk, base_path):
    port = free_port()
    config = write_config(f"""
        [tcp]
        cmd = tcp://127.0.0.1:{port}
        refresh = 5
        timeout = 1
        service_port = 1
        service_hostname = host1
        zookeeper_path = {base_path}/tcp

        [http]
        cmd = http://127.0.0.1:{port}/missing
        expect_status = 404
        refresh = 5
        timeout = 1
        service_port = 2
        service_hostname = host1
        zookeeper_path = {base_path}/http
        """)
    server = supervisord(web_program(port) + listener_section(config))
    nodes = [f"{base_path}/tcp/host1:1", f"{base_path}/http/host1:2"]
    wait_until(lambda: all(node_exists(zk, n) for n in nodes), 15, what="registration")
    server.ctl("stop", "web")
    wait_until(lambda: not any(node_exists(zk, n) for n in nodes), 12, what="deregistration")
    log = config.parent / "zkwatcher.log"
    wait_until(lambda: "[tcp] check failed: failed: connect: Connection refused"
               in log.read_text(), 5, what="probe failure logged")
    server.ctl("start", "web")
    wait_until(lambda: all(node_exists(zk, n) for n in nodes), 12, what="re-registration")


def test_payload_formats_decode_as_their_consumers_expect(write_config, driver, zk, base_path):
    config = write_config(f"""
        [finagle]
        cmd = true
        service_port = 8080
        service_hostname = web1.example.com
        zookeeper_path = {base_path}/serverset/web
        zookeeper_data = {{"shard": 3}}
        payload_format = serverset

        [curator]
        cmd = true
        service_port = 9090
        service_hostname = 10.0.0.7
        zookeeper_path = {base_path}/discovery/api
        zookeeper_data = {{"zone": "a"}}
        payload_format = curator

        [classic]
        cmd = true
        service_port = 80
        service_hostname = web1
        zookeeper_path = {base_path}/classic
        """)
    before = int(time.time() * 1000)
    driver(config)
    # Finagle lists children named member_* under the ServerSet path.
    serverset = f"{base_path}/serverset/web"
    wait_until(lambda: zk.exists(serverset) and zk.get_children(serverset), 10, what="serverset")
    (member,) = zk.get_children(serverset)
    assert re.fullmatch(r"member_\d{10}", member), member  # Finagle parses the number
    data = json.loads(zk.get(f"{serverset}/{member}")[0])
    assert data == {"serviceEndpoint": {"host": "web1.example.com", "port": 8080},
                    "additionalEndpoints": {}, "status": "ALIVE", "shard": 3}

    # Curator x-discovery: <basePath>/<name>/<id>, ServiceInstance JSON.
    instance_path = f"{base_path}/discovery/api/10.0.0.7:9090"
    wait_until(lambda: node_exists(zk, instance_path), 10, what="curator instance")
    instance = json.loads(zk.get(instance_path)[0])
    assert instance["name"] == "api" and instance["id"] == "10.0.0.7:9090"
    assert instance["address"] == "10.0.0.7" and instance["port"] == 9090
    assert instance["serviceType"] == "DYNAMIC"
    assert instance["payload"] == {"zone": "a"}
    assert isinstance(instance["registrationTimeUTC"], int)
    assert before <= instance["registrationTimeUTC"] <= int(time.time() * 1000)
    assert instance["sslPort"] is None and instance["uriSpec"] is None

    classic = json.loads(zk.get(f"{base_path}/classic/web1:80")[0])
    assert set(classic) == {"pid", "created"}


def test_prometheus_metrics(write_config, driver, zk, base_path, tmp_path):
    port = free_port()
    flag = tmp_path / "flip-up"
    flag.touch()
    config = write_config(f"""
        [up]
        cmd = true
        service_port = 1
        service_hostname = host1
        zookeeper_path = {base_path}/up

        [flip]
        cmd = test -f {flag}
        refresh = 1
        service_port = 2
        service_hostname = host1
        zookeeper_path = {base_path}/flip
        """, settings=f"metrics_port = {port}\n")
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
