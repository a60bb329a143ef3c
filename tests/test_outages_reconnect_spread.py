"""reconnect_spread: after a session expiry, each listener opens its new session a
random 0..spread seconds later, so a fleet cut off together comes back spread out."""

from __future__ import annotations

import re
import textwrap
import time

import pytest
from support.watches import node_exists

from zkwatcher_supervisor.config import (
    DEFAULT_RECONNECT_SPREAD,
    ConfigError,
    load_config,
)
from zkwatcher_supervisor.testing import FaultProxy, wait_until
from zkwatcher_supervisor.zookeeper import ZooKeeperHandler

SERVICE = "[s]\ncmd = true\nservice_port = 1\nzookeeper_path = /s\n"


def config_with(tmp_path, global_lines: str):
    path = tmp_path / "zkwatcher.cfg"
    path.write_text(f"[zkwatcher]\n{global_lines}\n{SERVICE}")
    return path


def test_default_keeps_a_lone_host_quick(tmp_path):
    config = load_config(str(config_with(tmp_path, "hosts = a:1")))
    assert config.zookeeper.reconnect_spread == DEFAULT_RECONNECT_SPREAD <= 1.0


@pytest.mark.parametrize(("text", "value"), [("0", 0.0), ("2.5", 2.5), ("600", 600.0)])
def test_spread_is_read_in_seconds(tmp_path, text, value):
    config = load_config(str(config_with(tmp_path, f"reconnect_spread = {text}")))
    assert config.zookeeper.reconnect_spread == value
    assert not config.warnings


def test_spread_survives_a_server_override(tmp_path):
    config = load_config(str(config_with(tmp_path, "reconnect_spread = 7")),
                         hosts_override="zk9:2181")
    assert (config.zookeeper.hosts, config.zookeeper.reconnect_spread) == ("zk9:2181", 7.0)


@pytest.mark.parametrize(("text", "message"), [
    ("x", "reconnect_spread: expected a number of seconds, got 'x'"),
    ("-1", "reconnect_spread: must be zero or a positive number of seconds, got '-1'"),
    ("inf", "reconnect_spread: must be zero or a positive number of seconds, got 'inf'"),
    ("601", "reconnect_spread: must be at most 600 seconds, got '601'"),
])
def test_bad_spread_is_a_located_error(tmp_path, text, message):
    path = config_with(tmp_path, f"reconnect_spread = {text}")
    with pytest.raises(ConfigError) as caught:
        load_config(str(path))
    assert str(caught.value) == f"{path}: line 2: [zkwatcher] {message}"


def test_handler_draws_within_the_spread_and_waits_once():
    handler = ZooKeeperHandler(2.0)
    draws = {handler.session_expired() for _ in range(50)}
    assert all(0.0 <= d <= 2.0 for d in draws) and len(draws) > 40
    assert ZooKeeperHandler(0.0).session_expired() == 0.0
    handler._delay = 0.2  # as drawn by session_expired
    started = time.monotonic()
    with pytest.raises(OSError):
        handler.create_connection(("127.0.0.1", 9), timeout=0.5)  # nothing listens on 9
    assert time.monotonic() - started >= 0.2 and handler.last_delay == 0.2
    started = time.monotonic()
    with pytest.raises(OSError):
        handler.create_connection(("127.0.0.1", 9), timeout=0.5)
    assert time.monotonic() - started < 0.2  # the wait was for one connection only


@pytest.mark.e2e
def test_hosts_whose_sessions_expired_together_come_back_spread(
        zookeeper, write_config, driver, zk, base_path, tmp_path):
    spread, hosts = 3.0, 4
    proxy = FaultProxy(zookeeper.port)
    nodes, drivers = [], []
    for i in range(hosts):
        (tmp_path / f"h{i}").mkdir()
        config = write_config(textwrap.dedent(f"""
            [s]
            cmd = true
            refresh = 30
            service_port = 1
            service_hostname = host{i}
            zookeeper_path = {base_path}/s
            """), name=f"h{i}/zkwatcher.cfg", hosts=proxy.hosts, session_timeout=2,
            settings=f"reconnect_spread = {spread:g}")
        drivers.append(driver(config))
        nodes.append(f"{base_path}/s/host{i}:1")
    try:
        for node in nodes:
            wait_until(lambda node=node: node_exists(zk, node), 15, what=node)
        proxy.cut()
        # Expired on the server: every node is gone.
        wait_until(lambda: not any(node_exists(zk, node) for node in nodes), 15,
                   what="session expiry")
        proxy.restore()
        restored = time.monotonic()
        back: dict[str, float] = {}

        def all_back() -> bool:
            for node in nodes:
                if node not in back and node_exists(zk, node):
                    back[node] = time.monotonic() - restored
            return len(back) == hosts

        wait_until(all_back, spread + 10, interval=0.02, what="re-registration")
    finally:
        proxy.close()
    delays = []
    for drv in drivers:
        # The line was logged at the expiry, before the wait; give the writer its moment.
        wait_until(lambda drv=drv: "will reconnect in" in drv.stderr(), 5, what="the draw logged")
        drawn = re.findall(r"will reconnect in (\d+\.\d+)s", drv.stderr())
        assert len(drawn) == 1, drv.stderr()
        delays.append(float(drawn[0]))
    assert all(0.0 <= d <= spread for d in delays)
    assert len(set(delays)) > 1  # each host draws its own
    for node, delay in zip(nodes, delays):
        # No earlier than the host's own draw (the new session waits for it),
        # and within the spread plus kazoo's retry cadence (< 0.7 s) and a margin.
        assert delay - 0.05 <= back[node] <= spread + 2.0, (node, delay, back[node])
