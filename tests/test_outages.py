"""Registrations stay right through the faults a production host sees: outages,
partitions, session loss and expiry, refusals, crashes, nodes touched by others.

Every case runs real servers: ZooKeeper (standalone or a 3-node ensemble on
127.0.0.1) and, where the case involves programs, a real supervisord.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time

import pytest
from kazoo.client import KazooClient
from kazoo.security import ACL, Id, Permissions, make_digest_acl
from support.driver import Ticker, tick_until
from support.proxies import ZooKeeperLink
from support.sections import listener_section, section
from support.text import count_lines
from support.watches import node_exists

from zkwatcher_supervisor.testing import (
    FaultProxy,
    LocalZooKeeper,
    local_ensemble,
    log_time,
    wait_until,
)

pytestmark = pytest.mark.e2e


def sleeper(name, autostart=True):
    return textwrap.dedent(f"""
        [program:{name}]
        command = sleep 100000
        startsecs = 0
        stopsignal = KILL
        autostart = {str(autostart).lower()}
        """)


@pytest.fixture
def own_zookeeper(tmp_path):
    """A ZooKeeper of this test's own, free to be killed and restarted."""
    server = LocalZooKeeper(tmp_path / "own-zk").start()
    yield server
    server.stop()


def client_for(hosts, timeout=10, **kwargs):
    # kazoo's default reconnect backoff grows towards a minute, so after a 10 s
    # outage a consumer could wait far longer than the listener to come back.
    kwargs.setdefault("connection_retry", {"max_tries": -1, "delay": 0.1, "max_delay": 1})
    client = KazooClient(hosts=hosts, timeout=timeout, **kwargs)
    client.start(timeout=30)
    return client


class Deletions:
    """Every DELETED event of one znode as a consumer's watch sees it, kept across
    data changes and reconnects (kazoo sets its watches again on reconnect, so a
    deletion while it was away is reported too)."""

    def __init__(self, zk: KazooClient, path: str) -> None:
        self.events: list = []
        self._zk, self._path = zk, path
        zk.exists(path, watch=self._fired)

    def _fired(self, event) -> None:
        if event.type == "DELETED":
            self.events.append(event)
        else:
            self._zk.exists(self._path, watch=self._fired)


def test_zookeeper_down_10s_within_the_session_timeout_keeps_nodes(
        own_zookeeper, write_config, supervisord, base_path, tmp_path):
    """The server is killed and restarted 10 s later; the session (30 s) outlives
    it: the node of a program that kept running is the very same node afterwards,
    and what changed meanwhile is applied once the listener is back."""
    config = write_config(
        section(base_path, "a", 1, program="a") + section(base_path, "b", 2, program="b")
        + section(base_path, "c", 3, program="c"),
        hosts=own_zookeeper.hosts, session_timeout=30)
    server = supervisord(sleeper("a") + sleeper("b", autostart=False) + sleeper("c")
                         + sleeper("churn") + listener_section(config), loglevel="debug")
    zk = client_for(own_zookeeper.hosts, timeout=30)
    node_a, node_b, node_c = (f"{base_path}/a/host1:1", f"{base_path}/b/host1:2",
                              f"{base_path}/c/host1:3")
    try:
        wait_until(lambda: node_exists(zk, node_a) and node_exists(zk, node_c), 15,
                   what="a and c registered")
        before = zk.exists(node_c)
        assert own_zookeeper.session_timeouts()[before.ephemeralOwner] == 30000
        deletions = Deletions(zk, node_c)

        own_zookeeper.kill()
        outage_started = time.monotonic()
        server.ctl("stop", "a")
        server.ctl("start", "b")
        for _ in range(20):  # a burst of events for the listener while ZooKeeper is gone
            server.ctl("restart", "churn")
        assert server.info("zkwatcher")["statename"] == "RUNNING"
        time.sleep(max(0.0, 10 - (time.monotonic() - outage_started)))

        own_zookeeper.start()
        back = time.monotonic()
        probe = client_for(own_zookeeper.hosts)  # connects at once; zk retries with backoff
        try:
            wait_until(lambda: node_exists(probe, node_b) and not node_exists(probe, node_a),
                       10, interval=0.01, what="nodes matching the programs")
        finally:
            probe.stop()
            probe.close()
        recovered = time.monotonic() - back
        reconnected = log_time((config.parent / "zkwatcher.log").read_text,
                               "connected to ZooKeeper", after=time.time() - recovered - 0.5)
        after_reconnect = time.time() - reconnected
        print(f"ZooKeeper serving again -> nodes right: {recovered:.2f}s "
              f"({after_reconnect:.2f}s after the listener reconnected)")
        assert after_reconnect < 1.0
        assert recovered < 3.0  # reconnect (retry backoff) + 1 s
        wait_until(lambda: zk.connected, 10, what="the consumer reconnected")
        after = zk.exists(node_c)
        assert (after.czxid, after.mzxid, after.ephemeralOwner) == \
            (before.czxid, before.mzxid, before.ephemeralOwner)
        assert zk.exists(node_b).ephemeralOwner == before.ephemeralOwner  # same session
        assert deletions.events == []
        assert "overflow" not in server.log_text()
        busy = server.busy_periods()
        print(f"events answered: {len(busy)}, longest BUSY {max(busy) * 1000:.0f} ms")
        assert len(busy) >= 80  # 20 restarts of churn alone make 80 state events
        assert max(busy) < 0.5
    finally:
        zk.stop()
        zk.close()


def test_session_expiry_restores_wanted_nodes_only(
        zookeeper, zk, write_config, driver, base_path, tmp_path):
    flag = tmp_path / "b-up"
    flag.touch()
    runs = tmp_path / "b-runs"
    proxy = FaultProxy(zookeeper.port)
    try:
        config = write_config(section(base_path, "a", 1, cmd="true")
                              + section(base_path, "b", 2, cmd=f"echo >> {runs}; test -f {flag}"),
                              hosts=proxy.hosts)
        drv = driver(config)
        node_a, node_b = f"{base_path}/a/host1:1", f"{base_path}/b/host1:2"
        deadline = time.monotonic() + 10
        while not (node_exists(zk, node_a) and node_exists(zk, node_b)):
            assert time.monotonic() < deadline
            drv.tick()
            time.sleep(0.1)
        old_owner = zk.exists(node_a).ephemeralOwner
        assert zookeeper.session_timeouts()[old_owner] == 4000

        proxy.cut()  # longer than the 4 s session timeout: the server expires the session
        wait_until(lambda: not node_exists(zk, node_a), 15, what="session expiry")
        flag.unlink()  # b goes unhealthy while we are cut off
        time.sleep(1.1)
        drv.tick()
        wait_until(lambda: "[b] unhealthy" in drv.stderr(), 5, what="b down")

        restored = time.time()
        proxy.restore()
        wait_until(lambda: node_exists(zk, node_a), 5, interval=0.01, what="re-registration")
        stat = zk.exists(node_a)
        assert stat.ephemeralOwner != old_owner
        connected = log_time(drv.stderr, "connected to ZooKeeper", after=restored - 0.01)
        delay = stat.ctime / 1000 - connected
        print(f"new session -> node back: {delay * 1000:.0f} ms")
        assert delay < 1.0
        # Two more runs of b's check in the new session: the first one's failure
        # has been applied by the time the second starts.
        seen = count_lines(runs)
        wait_until(lambda: count_lines(runs) >= seen + 2, 5, what="two more runs of b")
        assert not node_exists(zk, node_b)  # unwanted: not recreated
        assert node_exists(zk, node_a)
    finally:
        proxy.close()


def test_silent_partition_shorter_than_the_session_keeps_every_node(
        zookeeper, zk, write_config, driver, base_path):
    """Packets are dropped, nothing is closed: the listener's client only notices
    at its own read timeout (2/3 of the session).  Restored right then, well
    inside the 10 s session: the nodes are the same nodes, never deleted."""
    proxy = FaultProxy(zookeeper.port)
    try:
        config = write_config(section(base_path, "a", 1, cmd="true")
                              + section(base_path, "b", 2, cmd="true"),
                              hosts=proxy.hosts, session_timeout=10)
        drv = driver(config)
        nodes = [f"{base_path}/a/host1:1", f"{base_path}/b/host1:2"]
        wait_until(lambda: all(node_exists(zk, n) for n in nodes), 10, what="registration")
        before = [zk.exists(n) for n in nodes]
        assert zookeeper.session_timeouts()[before[0].ephemeralOwner] == 10000
        deletions = [Deletions(zk, n) for n in nodes]

        proxy.freeze()
        frozen = time.monotonic()
        wait_until(lambda: "connection suspended" in drv.stderr(), 9, interval=0.05,
                   what="the listener noticing the partition")
        print(f"partition noticed after {time.monotonic() - frozen:.1f}s")
        proxy.restore()
        wait_until(lambda: drv.stderr().count("connected to ZooKeeper") >= 2, 10,
                   interval=0.05, what="reconnected")
        assert time.monotonic() - frozen < 10
        assert "session lost" not in drv.stderr()
        drv.tick()  # still answering
        after = [zk.exists(n) for n in nodes]
        for b, a in zip(before, after):
            assert (a.czxid, a.mzxid, a.ephemeralOwner) == (b.czxid, b.mzxid, b.ephemeralOwner)
        assert [d.events for d in deletions] == [[], []]
    finally:
        proxy.close()


def test_silent_partition_longer_than_the_session_ends_with_the_nodes_back(
        zookeeper, zk, write_config, driver, base_path):
    """Frozen past the 4 s session: ZooKeeper expires it and drops the nodes; once
    packets flow again the listener gets a new session and registers again."""
    proxy = FaultProxy(zookeeper.port)
    try:
        config = write_config(section(base_path, "a", 1, cmd="true"), hosts=proxy.hosts,
                              session_timeout=4)
        drv = driver(config)
        node = f"{base_path}/a/host1:1"
        wait_until(lambda: node_exists(zk, node), 10, what="registration")
        old_owner = zk.exists(node).ephemeralOwner
        assert zookeeper.session_timeouts()[old_owner] == 4000

        proxy.freeze()
        frozen = time.monotonic()
        wait_until(lambda: not node_exists(zk, node), 4 + 4, interval=0.05,
                   what="session expired by the server")
        print(f"frozen -> node dropped: {time.monotonic() - frozen:.1f}s")
        assert drv.process.poll() is None
        restored = time.time()
        proxy.restore()
        wait_until(lambda: node_exists(zk, node), 10, interval=0.01, what="registered again")
        stat = zk.exists(node)
        assert stat.ephemeralOwner != old_owner
        connected = log_time(drv.stderr, "connected to ZooKeeper", after=restored - 0.01)
        assert stat.ctime / 1000 - connected < 1.0
        assert json.loads(zk.get(node)[0])["pid"] == drv.process.pid
    finally:
        proxy.close()


@pytest.fixture
def ensemble(tmp_path):
    servers = [server.start(wait=False) for server in local_ensemble(tmp_path)]
    for server in servers:
        server.wait_ready(90)
    yield servers
    for server in servers:
        server.stop()


def test_leader_killed_in_a_3_node_ensemble_loses_no_registration(
        ensemble, write_config, driver, base_path, tmp_path):
    hosts = ",".join(server.hosts for server in ensemble)
    # The default session timeout (10 s), not the short one the other tests use: an
    # election on a loaded 2-core machine must not look like a dead listener.
    runs = tmp_path / "runs"
    config = write_config(section(base_path, "a", 1, cmd=f"echo >> {runs}"), hosts=hosts,
                          session_timeout=10)
    leader = next(server for server in ensemble if server.mode() == "leader")
    follower = next(server for server in ensemble if server.mode() == "follower")
    observer = client_for(follower.hosts)
    node = f"{base_path}/a/host1:1"
    drv = driver(config)
    wait_until(lambda: node_exists(observer, node), 10, what="registration")
    owner = observer.exists(node).ephemeralOwner
    negotiated = {}
    for server in ensemble:
        negotiated.update(server.session_timeouts())
    assert negotiated[owner] == 10000

    deletions = []
    observer.exists(node, watch=lambda event: deletions.append(event))
    leader.kill()
    killed = time.monotonic()
    # A new leader is elected and the listener's session moves to a live member.
    wait_until(lambda: any(s.mode() == "leader" for s in ensemble if s is not leader),
               30, interval=0.2, what="new leader")
    print(f"new leader after {time.monotonic() - killed:.1f}s")
    wait_until(lambda: observer.connected and observer.exists(node), 15, what="observer back")
    seen = count_lines(runs)
    wait_until(lambda: count_lines(runs) >= seen + 3, 10, what="three more check runs")
    drv.tick()
    stat = observer.exists(node)
    assert stat is not None and stat.ephemeralOwner == owner  # same session, never dropped
    assert [e for e in deletions if e.type == "DELETED"] == []
    observer.stop()
    observer.close()


def test_node_deleted_by_hand_comes_back_within_1s(zk, write_config, driver, base_path):
    drv = driver(write_config(section(base_path, "a", 1, cmd="true")))
    node = f"{base_path}/a/host1:1"
    wait_until(lambda: node_exists(zk, node), 10, what="registration")
    delays = []
    for _ in range(5):
        zk.delete(node)
        deleted = time.monotonic()
        wait_until(lambda: node_exists(zk, node), 1.0, interval=0.005, what="recreated")
        delays.append(time.monotonic() - deleted)
    print(f"deleted by hand -> recreated: {sorted(d * 1000 for d in delays)} ms")
    assert drv.process.poll() is None


def test_crashed_listener_reattaches_its_session_and_the_node_never_goes(
        zookeeper, zk, write_config, supervisord, base_path):
    """SIGKILL, supervisord restarts the listener, and the new one takes over
    the old session (saved in its session file): same node, same czxid, and a
    consumer's watch never sees it deleted."""
    config = write_config(section(base_path, "a", 1, cmd="true"), session_timeout=10)
    server = supervisord(listener_section(config, extra="autorestart = true\n"))
    node = f"{base_path}/a/host1:1"
    wait_until(lambda: node_exists(zk, node), 10, what="registration")
    old_pid = server.info("zkwatcher")["pid"]
    before = zk.exists(node)
    # The restart below must fit in the session, or the node would go with it.
    assert zookeeper.session_timeouts()[before.ephemeralOwner] == 10000
    deleted = threading.Event()

    def watch(event):
        if event.type == "DELETED":
            deleted.set()
        elif not deleted.is_set():
            zk.exists(node, watch=watch)  # keep watching across data changes

    zk.exists(node, watch=watch)
    os.kill(old_pid, signal.SIGKILL)
    wait_until(lambda: server.info("zkwatcher")["statename"] == "RUNNING"
               and server.info("zkwatcher")["pid"] != old_pid, 10, what="restart")
    restarted = time.monotonic()
    log = config.parent / "zkwatcher.log"
    wait_until(lambda: "reattached to session" in log.read_text(), 2, interval=0.01,
               what="reattached")
    print(f"restart -> reattached: {time.monotonic() - restarted:.2f}s")
    # Its first check has passed and the result has been applied.
    wait_until(lambda: "[a] healthy: registering" in log.read_text().rsplit("watching ", 1)[1],
               5, interval=0.01, what="first check of the new listener")
    after = zk.exists(node)
    # Not even rewritten: the payload differs only in pid and start time.
    assert (after.czxid, after.mzxid, after.ephemeralOwner) == \
        (before.czxid, before.mzxid, before.ephemeralOwner)
    assert not deleted.is_set()


def test_node_held_by_another_session_is_never_deleted(
        zookeeper, zk, write_config, driver, base_path, tmp_path):
    """A zk_watcher still running during a migration, or a second listener
    started by mistake: we leave its node alone and register once it goes."""
    other = client_for(zookeeper.hosts)
    node = f"{base_path}/a/host1:1"
    other.create(node, b"theirs", ephemeral=True, makepath=True)
    try:
        theirs = zk.exists(node)
        runs = tmp_path / "runs"
        drv = driver(write_config(section(base_path, "a", 1, cmd=f"echo >> {runs}")))
        wait_until(lambda: "held by another session" in drv.stderr(), 10, what="logged")
        seen = count_lines(runs)
        wait_until(lambda: count_lines(runs) >= seen + 3, 10, what="three more check runs")
        data, stat = zk.get(node)
        assert (data, stat.czxid, stat.version) == (b"theirs", theirs.czxid, 0)
        assert drv.stderr().count("held by another session") == 1
        other.stop()  # their session ends, their node goes
        gone = time.monotonic()
        wait_until(lambda: node_exists(zk, node) and zk.get(node)[0] != b"theirs", 1,
                   interval=0.005, what="our node")
        print(f"their node gone -> ours: {(time.monotonic() - gone) * 1000:.0f} ms")
        assert json.loads(zk.get(node)[0])["pid"] == drv.process.pid
    finally:
        other.close()


def test_persistent_node_at_our_path_is_never_touched(
        zk, write_config, driver, base_path, tmp_path):
    """Someone created our node's path as a persistent node: we log it and leave it
    alone while healthy, when the check fails, and when we stop."""
    flag = tmp_path / "up"
    flag.touch()
    runs = tmp_path / "runs"
    node = f"{base_path}/a/host1:1"
    zk.create(node, b"persistent", makepath=True)
    before = zk.exists(node)
    drv = driver(write_config(section(base_path, "a", 1,
                                      cmd=f"echo >> {runs}; test -f {flag}")))
    wait_until(lambda: "exists as a persistent node we did not create" in drv.stderr(), 10,
               what="logged")
    seen = count_lines(runs)
    wait_until(lambda: count_lines(runs) >= seen + 3, 10, what="three more passing runs")
    assert drv.stderr().count("exists as a persistent node we did not create") == 1
    flag.unlink()
    wait_until(lambda: "[a] check failed" in drv.stderr(), 5, what="check failed")
    seen = count_lines(runs)
    wait_until(lambda: count_lines(runs) >= seen + 1, 5, what="another run")
    drv.process.terminate()
    assert drv.process.wait(5) == 0
    data, stat = zk.get(node)
    assert (data, stat.czxid, stat.mzxid, stat.version, stat.ephemeralOwner) == \
        (b"persistent", before.czxid, before.mzxid, 0, 0)


def test_second_listener_with_the_same_config_never_fights_the_first(
        zk, write_config, driver, base_path, tmp_path):
    """Started twice by mistake: the second neither shares the first's session
    nor touches its node; it takes over only when the first is gone."""
    runs = tmp_path / "runs"  # the pid of the listener that ran each check
    config = write_config(section(base_path, "a", 1, cmd=f"echo $PPID >> {runs}"),
                          session_timeout=4)
    first = driver(config)
    node = f"{base_path}/a/host1:1"
    wait_until(lambda: node_exists(zk, node), 10, what="first registered")
    before = zk.exists(node)
    second = driver(config)
    wait_until(lambda: "held by another session" in second.stderr(), 10, what="second waits")
    wait_until(lambda: "not sharing its ZooKeeper session" in second.stderr(), 5,
               what="the reason logged")

    def runs_of_second():
        return runs.read_text().split().count(str(second.process.pid))

    wait_until(lambda: runs_of_second() >= 2, 5, what="two checks of the second passed")
    after = zk.exists(node)
    assert (after.czxid, after.mzxid, after.ephemeralOwner) == \
        (before.czxid, before.mzxid, before.ephemeralOwner)
    first.process.terminate()
    assert first.process.wait(5) == 0
    wait_until(lambda: node_exists(zk, node) and json.loads(zk.get(node)[0])["pid"]
               == second.process.pid, 2, interval=0.01, what="second registered")


def test_restart_after_the_session_expired_starts_afresh(zk, write_config, driver, base_path):
    config = write_config(section(base_path, "a", 1, cmd="true"), session_timeout=4)
    first = driver(config)
    node = f"{base_path}/a/host1:1"
    wait_until(lambda: node_exists(zk, node), 10, what="registered")
    first.process.kill()  # leaves its session file behind
    first.process.wait()
    wait_until(lambda: not node_exists(zk, node), 4 + 3, interval=0.05, what="expired")
    second = driver(config)
    wait_until(lambda: node_exists(zk, node), 5, interval=0.01, what="registered again")
    assert json.loads(zk.get(node)[0])["pid"] == second.process.pid
    wait_until(lambda: "has expired; started" in second.stderr(), 5, what="expiry logged")


@pytest.mark.parametrize("payload_format", ["nd_service_registry", "serverset"])
def test_node_made_just_before_a_crash_is_not_left_behind(
        zk, write_config, driver, base_path, tmp_path, payload_format):
    """Killed after a create's reply but before the session file recorded it:
    the restarted listener still finds that node of its session.  Unwanted, it
    goes; wanted again later, there is still only one."""
    from zkwatcher_supervisor import session_file

    flag = tmp_path / "up"
    flag.touch()
    config = write_config(section(base_path, "a", 1, cmd=f"test -f {flag}")
                          + f"payload_format = {payload_format}\n", session_timeout=10)
    first = driver(config)
    parent = f"{base_path}/a"
    wait_until(lambda: zk.exists(parent) and zk.get_children(parent), 10, what="registered")
    wait_until(lambda: session_file.load(session_file.default_path(str(config))).nodes, 5,
               what="session file written")
    path = session_file.default_path(str(config))
    saved = session_file.load(path)
    session_file.save(path, session_file.SavedSession(saved.session_id, saved.password, {}))
    first.process.kill()
    first.process.wait()
    flag.unlink()  # unhealthy when the next listener starts
    second = driver(config)
    wait_until(lambda: "reattached to session" in second.stderr(), 5, what="reattached")
    wait_until(lambda: not zk.get_children(parent), 5, interval=0.05,
               what="the node of the dead listener's last moment gone")
    flag.touch()
    wait_until(lambda: zk.get_children(parent), 5, what="registered again")
    time.sleep(2)
    assert len(zk.get_children(parent)) == 1


def crashed_before_saving_a_node(zk, write_config, driver, base_path, tmp_path, link,
                                 check_b):
    """Sections a and b registered through ``link`` by a listener killed -9 as if
    before saving a's node in its session file; a's check now fails, so its node
    is one of the session's that no section wants.  Returns (config, a's node, b's)."""
    from zkwatcher_supervisor import session_file

    up_a = tmp_path / "a"
    up_a.touch()
    config = write_config(section(base_path, "a", 1, cmd=f"test -f {up_a}")
                          + section(base_path, "b", 2, cmd=check_b),
                          hosts=link.hosts, session_timeout=10)
    first = driver(config)
    node_a, node_b = f"{base_path}/a/host1:1", f"{base_path}/b/host1:2"
    wait_until(lambda: node_exists(zk, node_a) and node_exists(zk, node_b), 10,
               what="registered")
    path = session_file.default_path(str(config))
    wait_until(lambda: session_file.load(path) and len(session_file.load(path).nodes) == 2,
               5, what="session file written")
    saved = session_file.load(path)
    session_file.save(path, session_file.SavedSession(
        saved.session_id, saved.password,
        {key: node for key, node in saved.nodes.items() if "/a/" not in key}))
    first.process.kill()
    first.process.wait()
    up_a.unlink()
    return config, node_a, node_b


def test_a_throttled_sweep_after_a_crash_is_tried_again(
        zookeeper, zk, write_config, driver, base_path, tmp_path):
    """Restarted after a crash, the listener lists its parents to delete the nodes of
    its session that nothing wants.  ZooKeeper throttles that listing (error -127)
    four passes running: the listener runs on, tries again with a backoff, and the node goes.
    Meanwhile another section's failing check takes its node out at once."""

    link = ZooKeeperLink(zookeeper.port)
    up_b = tmp_path / "b"
    up_b.touch()
    try:
        config, node_a, node_b = crashed_before_saving_a_node(
            zk, write_config, driver, base_path, tmp_path, link, f"test -f {up_b}")
        # Four passes' listings (two parents each) refused.
        link.refuse(GET_CHILDREN, THROTTLED, count=8)
        second = driver(config)
        wait_until(lambda: "reattached to session" in second.stderr(), 5, what="reattached")
        wait_until(lambda: "ZooKeeper refused reading or sweeping a parent (ThrottledOpError" in
                   second.stderr(), 10, what="the throttled listing logged")
        up_b.unlink()
        failed = time.monotonic()
        wait_until(lambda: not node_exists(zk, node_b), 5, interval=0.02,
                   what="b's node out while the sweep waits")
        print(f"b's check failing -> node gone: {time.monotonic() - failed:.2f}s")
        assert time.monotonic() - failed < 3.0  # refresh 1 s, not the sweep's 7.5 s
        assert node_exists(zk, node_a)
        wait_until(lambda: not node_exists(zk, node_a), 15, interval=0.05,
                   what="the unwanted node deleted once the listing is allowed")
        assert second.stderr().count("ZooKeeper refused reading or sweeping a parent") == 4
        # Each listing (both parents at once) only after the backoff its refusal
        # started, b's deletion pass included: 0.5 s, doubling.
        listings = [t for t, op in list(link.requests) if op == GET_CHILDREN]
        attempts = [t for i, t in enumerate(listings) if i == 0 or t - listings[i - 1] > 0.2]
        gaps = [later - earlier for earlier, later in zip(attempts, attempts[1:])]
        print("listing attempts apart:", ", ".join(f"{gap:.2f}s" for gap in gaps))
        assert len(attempts) == 5, gaps
        assert all(gap >= 0.9 * 0.5 * 2 ** n for n, gap in enumerate(gaps)), gaps
        second.tick()
        assert second.process.poll() is None, second.stderr()
    finally:
        link.close()


GET_CHILDREN, THROTTLED = 8, -127  # ZooKeeper's opcode and error code
NO_NODE = -101  # ZooKeeper's NONODE


def test_a_throttled_delete_of_the_sweep_after_a_crash_is_tried_again(
        zookeeper, zk, write_config, driver, base_path, tmp_path):
    """Restarted after a crash, the listener deletes the node of its session that no
    section wants (its predecessor died before saving it).  ZooKeeper throttles that
    delete, doing nothing: the sweep is tried again after the backoff and the node
    goes, rather than staying registered until the session ends."""

    link = ZooKeeperLink(zookeeper.port)
    try:
        config, node_a, node_b = crashed_before_saving_a_node(
            zk, write_config, driver, base_path, tmp_path, link, "true")
        link.refuse(ZooKeeperLink.DELETE, THROTTLED, count=1, carried_out=False)
        second = driver(config)
        wait_until(lambda: "reattached to session" in second.stderr(), 5, what="reattached")
        wait_until(lambda: "ZooKeeper refused reading or sweeping a parent (ThrottledOpError"
                   in second.stderr(), 10, what="the throttled delete logged")
        assert node_exists(zk, node_a)  # the refused delete did nothing
        wait_until(lambda: not node_exists(zk, node_a), 10, interval=0.05,
                   what="the unwanted node deleted by the sweep tried again")
        deletes = [t for t, op in link.requests if op == ZooKeeperLink.DELETE]
        assert len(deletes) == 2 and deletes[1] - deletes[0] >= 0.45, deletes
        assert node_exists(zk, node_b)
        second.tick()
        assert second.process.poll() is None, second.stderr()
    finally:
        link.close()


@pytest.mark.parametrize("payload_format", ["nd_service_registry", "serverset"])
def test_a_refused_watch_on_a_new_node_is_set_again(
        zookeeper, zk, write_config, driver, base_path, tmp_path, payload_format):
    """A check starts passing and the node goes in; ZooKeeper throttles the
    ``exists`` that sets its watch.  Without that watch nothing would notice a
    deletion by hand: the listener sets it again, and the node deleted by hand
    comes back."""
    link = ZooKeeperLink(zookeeper.port)
    up = tmp_path / "up"
    parent = f"{base_path}/a"
    try:
        config = write_config(section(base_path, "a", 1, cmd=f"test -f {up}",
                                      payload_format=payload_format)
                              + section(base_path, "b", 2, cmd="true"), hosts=link.hosts)
        drv = driver(config)
        wait_until(lambda: node_exists(zk, f"{base_path}/b/host1:2"), 10, what="b registered")
        zk.ensure_path(parent)  # a's create is the only write when its check passes
        time.sleep(1.5)  # a's failing checks are in: nothing else is under way
        # A member's create comes after a read of its parent: that one refused too.
        link.refuse(ZooKeeperLink.EXISTS, THROTTLED,
                    count=1 if payload_format == "nd_service_registry" else 2)
        up.touch()
        wait_until(lambda: zk.get_children(parent), 10, what="a registered")
        wait_until(lambda: "ZooKeeper refused watching it (ThrottledOpError" in drv.stderr(),
                   5, what="the refused watch logged")
        time.sleep(2)  # the watch set again (after the retry's backoff)
        [node] = zk.get_children(parent)
        zk.delete(f"{parent}/{node}")
        deleted = time.monotonic()
        wait_until(lambda: zk.get_children(parent), 5, interval=0.02,
                   what="a's node back after its deletion by hand")
        print(f"deleted by hand -> back: {time.monotonic() - deleted:.2f}s")
        assert len(zk.get_children(parent)) == 1
        drv.tick()
        assert drv.process.poll() is None, drv.stderr()
    finally:
        link.close()


def test_a_new_node_its_watch_finds_gone_is_looked_at_again(
        zookeeper, zk, write_config, driver, base_path, tmp_path):
    """The ``exists`` that sets a new node's watch answers "no node" (as when
    the node is deleted by hand before it): the listener looks at the node
    again at once, watches it, and a later deletion by hand brings it back."""
    link = ZooKeeperLink(zookeeper.port)
    up = tmp_path / "up"
    parent = f"{base_path}/a"
    try:
        config = write_config(section(base_path, "a", 1, cmd=f"test -f {up}")
                              + section(base_path, "b", 2, cmd="true"), hosts=link.hosts)
        drv = driver(config)
        wait_until(lambda: node_exists(zk, f"{base_path}/b/host1:2"), 10, what="b registered")
        zk.ensure_path(parent)
        time.sleep(1.5)  # b's watch is set: the next exists is a's
        link.refuse(ZooKeeperLink.EXISTS, NO_NODE)
        refused_from = len(link.requests)
        up.touch()
        wait_until(lambda: zk.get_children(parent), 10, what="a registered")
        wait_until(lambda: "deleted as soon as it was created; looking again" in drv.stderr(),
                   5, what="the gone node logged")
        time.sleep(0.5)  # the next pass's lookup, which sets the watch
        exists = [at for at, opcode in link.requests[refused_from:]
                  if opcode == ZooKeeperLink.EXISTS]
        # The refused one, then the lookup at once: not after a retry's 0.5 s backoff.
        assert len(exists) >= 2, exists
        print(f"refused exists -> the next: {exists[1] - exists[0]:.3f}s")
        assert exists[1] - exists[0] < 0.3
        zk.delete(f"{parent}/host1:1")
        deleted = time.monotonic()
        wait_until(lambda: zk.get_children(parent), 5, interval=0.02,
                   what="a's node back after its deletion by hand")
        print(f"deleted by hand -> back: {time.monotonic() - deleted:.2f}s")
        drv.tick()
        assert drv.process.poll() is None, drv.stderr()
    finally:
        link.close()


def test_permanent_refusal_backs_off_and_registers_once_allowed(
        write_config, driver, zk, zookeeper, base_path):
    """The parent ``zookeeper_path`` belongs to another identity and lets the world only
    read: every create is refused with NoAuth.  The listener must not hammer ZooKeeper:
    from 4 s to 12 s after its first attempt it may send at most 8 requests (pings
    aside) — a backoff doubling from 0.5 s makes one attempt in that window, a fixed
    0.5 s retry 16.  Once the ACL is fixed the node must go in within 32 s (a 30 s
    backoff cap)."""
    other = KazooClient(hosts=zookeeper.hosts, auth_data=[("digest", "other:pw")])
    other.start(timeout=30)
    parent = f"{base_path}/svc"
    other.create(parent, makepath=True, acl=[
        make_digest_acl("other", "pw", all=True),
        ACL(Permissions.READ, Id("world", "anyone")),
    ])
    link = ZooKeeperLink(zookeeper.port)
    try:
        drv = driver(write_config(section(base_path, "svc", 1, cmd="true"), hosts=link.hosts))
        node = f"{parent}/host1:1"
        with Ticker(drv, interval=1.0) as ticker:
            first = wait_until(lambda: next((t for t, op in link.requests if op in (1, 15)),
                                            None), 10, what="first create")
            time.sleep(max(0.0, first + 12 - time.monotonic()))
            sent = link.work_requests(first + 4, first + 12)
            threads = len(os.listdir(f"/proc/{drv.process.pid}/task"))
            print(f"requests from 4 s to 12 s after the first refusal: {sent}; "
                  f"listener threads: {threads}")
            assert not node_exists(zk, f"{parent}/host1:1")
            assert sent <= 8, f"{sent} requests in 8 s while every create is refused"

            other.set_acls(parent, [ACL(Permissions.ALL, Id("world", "anyone"))])
            fixed = time.monotonic()
            wait_until(lambda: node_exists(zk, node), 32, interval=0.1,
                       what="registration once the ACL allows it")
            print(f"ACL fixed -> registered: {time.monotonic() - fixed:.1f}s")
            assert ticker.error is None, ticker.error
    finally:
        link.close()
        other.stop()
        other.close()


def test_session_loss_recreates_nodes_and_steady_state_writes_nothing(
        write_config, driver, zk, zookeeper, base_path, tmp_path):
    proxy = FaultProxy(zookeeper.port)
    runs = tmp_path / "runs"
    try:
        config = write_config(section(base_path, "svc", 8080, cmd=f"echo >> {runs}", timeout=1),
                              hosts=proxy.hosts)
        drv = driver(config)
        node = f"{base_path}/svc/host1:8080"
        tick_until(drv, lambda: node_exists(zk, node), 5, "registration")
        _, first = zk.get(node)

        # Steady state: checks keep passing and the node is never rewritten.
        seen = len(runs.read_text().splitlines())
        tick_until(drv, lambda: len(runs.read_text().splitlines()) >= seen + 4, 8,
                   "four more passing checks")
        _, later = zk.get(node)
        assert (later.czxid, later.mzxid, later.version) == (first.czxid, first.czxid, 0)

        # Cut the link for longer than the 4 s session timeout: the server expires
        # the session and drops our node; the listener must put it back.
        proxy.cut()
        wait_until(lambda: not node_exists(zk, node), 15, what="session expiry")
        for _ in range(3):
            drv.tick()  # events are still answered while ZooKeeper is unreachable
        proxy.restore()
        wait_until(lambda: node_exists(zk, node), 10, what="re-registration")
        _, second = zk.get(node)
        assert second.ephemeralOwner != first.ephemeralOwner
    finally:
        proxy.close()
