"""ServerSet members as real ServerSet readers expect them: ``member_`` plus a
ZooKeeper sequence number, exactly one per healthy section, through flaps,
session expiry, a create whose reply is lost, a crash and restart, and a
payload change.  Real ZooKeeper; the reader does what ServerSet readers do."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
from kazoo.exceptions import NoNodeError
from support.lost_reply import lost_reply_expiry_and_crash
from support.proxies import ZooKeeperLink
from support.sections import section

from zkwatcher_supervisor.testing import FaultProxy, wait_until

pytestmark = pytest.mark.e2e

def serverset_section(base_path, flag):
    return section(base_path, "web80", 80, cmd=f"test -f {flag}", timeout=1, hostname="h2",
                   path=f"{base_path}/web", payload_format="serverset",
                   zookeeper_data='{"shard": 0}')


def read_serverset(zk, path):
    """What a ServerSet reader sees: member_<int> children and their endpoints."""
    members = {}
    try:
        children = zk.get_children(path)
    except NoNodeError:
        return members
    for child in children:
        if not child.startswith("member_"):
            continue
        sequence = int(child[len("member_"):])  # what GroupBase.znode_to_id does
        try:
            data = json.loads(zk.get(f"{path}/{child}")[0])
        except NoNodeError:
            continue
        endpoint = data["serviceEndpoint"]
        members[child] = (sequence, endpoint["host"], endpoint["port"], data["status"],
                          data.get("shard"), data["additionalEndpoints"])
    return members


class Sampler:
    """Samples the reader's view continuously; a failure in the sampler fails the test."""

    def __init__(self, zk, path):
        self.zk, self.path = zk, path
        self.samples: list[dict] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            while not self._stop.is_set():
                self.samples.append(read_serverset(self.zk, self.path))
                time.sleep(0.005)
        except BaseException as exc:
            self.error = exc

    def stop(self):
        self._stop.set()
        self._thread.join(5)
        assert self.error is None, repr(self.error)
        assert self.samples, "no sample taken"
        for sample in self.samples:
            ports = [member[2] for member in sample.values()]
            assert len(ports) == len(set(ports)), f"two members for one section: {sample}"
        return len(self.samples)


def test_one_member_per_healthy_section_through_flaps_and_payload_changes(
        write_config, driver, zk, base_path, tmp_path):
    flag = tmp_path / "up"
    flag.touch()
    config = write_config(serverset_section(base_path, flag))
    drv = driver(config)
    path = f"{base_path}/web"
    wait_until(lambda: read_serverset(zk, path), 5, what="member")
    sampler = Sampler(zk, path)
    for _ in range(3):
        flag.unlink()
        wait_until(lambda: not read_serverset(zk, path), 5, what="deregistered")
        flag.touch()
        wait_until(lambda: read_serverset(zk, path), 5, what="registered again")
    (name, member), = read_serverset(zk, path).items()
    assert member[1:5] == ("h2", 80, "ALIVE", 0)
    version = zk.exists(f"{path}/{name}").version

    config.write_text(config.read_text().replace('"shard": 0', '"shard": 3'))
    drv.process.send_signal(signal.SIGHUP)
    wait_until(lambda: read_serverset(zk, path).get(name, (None,) * 5)[4] == 3, 5,
               what="payload updated in place")
    assert zk.exists(f"{path}/{name}").version == version + 1
    print(f"serverset reader samples: {sampler.stop()}")
    wait_until(lambda: f"registered {path}/{name}" in drv.stderr(), 5, what="member logged")

    def status():
        return subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "status", "-c",
                               str(config)], capture_output=True, text=True, timeout=60)

    # The status file is rewritten at most twice a second.
    result = wait_until(lambda: (r := status()).returncode == 0 and r, 3, interval=0.2,
                        what="status consistent")
    assert f"ok   [web80] {path}/{name} registered, healthy" in result.stdout


def test_member_survives_session_expiry_crash_and_a_lost_create_reply(
        zookeeper, write_config, driver, zk, base_path, tmp_path):
    flag = tmp_path / "up"
    path = f"{base_path}/web"
    link = ZooKeeperLink(zookeeper.port, delay=0.3, request_delay=0.0)
    proxy = FaultProxy(link.port)
    config = write_config(serverset_section(base_path, flag), hosts=proxy.hosts,
                          session_timeout=4)
    zk.ensure_path(path)  # so the first create we see is the member's own
    drv = driver(config)
    sampler = Sampler(zk, path)
    try:
        _, restarted = lost_reply_expiry_and_crash(zk, path, read_serverset, drv, config,
                                                   flag, link, proxy)
        restarted.stop()
    finally:
        print(f"serverset reader samples: {sampler.stop()}")
        proxy.close()
        link.close()
