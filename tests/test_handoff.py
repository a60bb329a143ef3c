"""Hand-over restarts (SIGUSR2 / ``handoff``) and crash restarts keep every
node: the successor reattaches to the saved ZooKeeper session.  Real
supervisord, real ZooKeeper; consumers are kazoo watches on every node."""

from __future__ import annotations

import os
import posixpath
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from kazoo.client import KazooClient
from kazoo.recipe.watchers import ChildrenWatch
from support.sections import listener_section, section
from support.watches import node_exists

from zkwatcher_supervisor.testing import wait_until

pytestmark = pytest.mark.e2e

HANDOVER_LISTENER = "autorestart = true\n"


def sections(base_path, count, program=None):
    text = "".join(section(base_path, f"s{i}", i + 1, cmd="true", refresh=5, timeout=None)
                   for i in range(count))
    if program:
        text += section(base_path, "prog", 9999, program=program)
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
    wait_until(lambda: log.read_text().rsplit("watching ", 1)[1]
               .count("healthy: registering") >= 50, 10, what="the successor's first checks")
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
    # Not 0: under supervisord's default autorestart = unexpected that is restarted.
    assert server.info("zkwatcher")["exitstatus"] == 75
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


def handoff(server, config, timeout=60):
    env = {**os.environ, "SUPERVISOR_SERVER_URL": f"unix://{server.workdir}/supervisor.sock"}
    return subprocess.run(
        [sys.executable, "-m", "zkwatcher_supervisor", "handoff", "-c", str(config)],
        capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("autorestart", ["", "autorestart = false\n"],
                         ids=["supervisord defaults", "autorestart false"])
def test_handoff_needs_no_autorestart_setting(write_config, supervisord, zk, base_path,
                                             autorestart):
    """The Install snippet as printed (no autorestart line: supervisord's default
    restarts only an unexpected exit) and even autorestart = false: the command
    proves the successor holds the same session, and exits 0 only then."""
    config = write_config(sections(base_path, 2), session_timeout=10)
    server = supervisord(listener_section(config, extra=autorestart))
    nodes = [f"{base_path}/s{i}/host1:{i + 1}" for i in range(2)]
    wait_until(lambda: all(node_exists(zk, n) for n in nodes), 20, what="all registered")
    owner = zk.exists(nodes[0]).ephemeralOwner
    consumer = EveryEvent(zk, nodes)
    old = listener_pid(server)
    result = handoff(server, config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"session 0x{owner:x} kept" in result.stdout
    assert listener_pid(server) not in (0, old)
    time.sleep(1)
    assert consumer.events == []
    assert all(zk.exists(n).ephemeralOwner == owner for n in nodes)


def test_handoff_is_refused_while_the_session_cannot_be_saved(
        write_config, supervisord, zk, base_path):
    """A state directory others may write is not used for the session: a hand-over
    would flap every node, so the listener refuses it, keeps running, and the
    command exits 1 saying why."""
    directory = "/run/zkwatcher-supervisor"
    config = write_config(sections(base_path, 2), session_timeout=10)
    server = supervisord(listener_section(config))
    nodes = [f"{base_path}/s{i}/host1:{i + 1}" for i in range(2)]
    wait_until(lambda: all(node_exists(zk, n) for n in nodes), 20, what="all registered")
    mode = os.stat(directory).st_mode & 0o777
    try:
        os.chmod(directory, 0o775)
        old = signal_listener(server, signal.SIGKILL)  # restarted into the open directory
        pid = wait_for_successor(server, old)
        wait_until(lambda: all(node_exists(zk, n) for n in nodes), 10, what="registered")
        log = config.parent / "zkwatcher.log"
        wait_until(lambda: "writable by others" in log.read_text(), 5, what="the warning")
        consumer = EveryEvent(zk, nodes)
        result = handoff(server, config)
        assert result.returncode == 1, result.stdout + result.stderr
        # Its status file is in that directory too: not believed, so nothing is signalled.
        assert "may be written by others; not trusted" in result.stderr, result.stderr
        assert listener_pid(server) == pid
        time.sleep(0.5)
        assert consumer.events == []
    finally:
        os.chmod(directory, mode)


def test_sigusr2_into_a_state_directory_others_may_write_is_refused_by_the_listener(
        write_config, driver, zk, base_path):
    """SIGUSR2 straight to the listener (no command checks first): it looks at its
    state directory (off its loop) and, since the successor would not trust one
    others may write, refuses, says why, and runs on with the same nodes."""
    from zkwatcher_supervisor import session_file

    config = write_config(sections(base_path, 1), session_timeout=10)
    drv = driver(config)
    node = f"{base_path}/s0/host1:1"
    wait_until(lambda: node_exists(zk, node), 10, what="registered")
    czxid = zk.exists(node).czxid
    directory = os.path.dirname(session_file.default_path(str(config)))
    mode = os.stat(directory).st_mode & 0o777
    try:
        os.chmod(directory, 0o775)
        drv.process.send_signal(signal.SIGUSR2)
        wait_until(lambda: "SIGUSR2: cannot hand over (" in drv.stderr(), 5,
                   what="the refusal logged")
    finally:
        os.chmod(directory, mode)
    assert (f"SIGUSR2: cannot hand over ({directory} is not private any more: a successor "
            "would not trust the session file); still running, nothing changed"
            ) in drv.stderr()
    drv.tick()
    assert drv.process.poll() is None, drv.stderr()
    assert zk.exists(node).czxid == czxid


def test_an_upgrade_takes_over_the_session_and_drains_an_earlier_version_left(
        write_config, supervisord, zk, base_path, tmp_path):
    """Earlier versions named their files after the config's resolved path and kept
    drains under /run.  The first start of this version finds them there: the
    hand-over that installs it flaps nothing and forgets no drain."""
    import hashlib

    real = write_config(sections(base_path, 2), name="v1.cfg", session_timeout=10)
    config = tmp_path / "config.cfg"
    config.symlink_to(real)  # a release symlink: resolved path != path as given
    server = supervisord(listener_section(config, extra="autorestart = false\n"))
    nodes = [f"{base_path}/s{i}/host1:{i + 1}" for i in range(2)]
    wait_until(lambda: all(node_exists(zk, n) for n in nodes), 20, what="all registered")
    env = {**os.environ, "SUPERVISOR_SERVER_URL": f"unix://{server.workdir}/supervisor.sock"}
    drained = subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "drain", "s1",
                              "-c", str(config)], capture_output=True, text=True, env=env)
    assert drained.returncode == 0, drained.stderr
    wait_until(lambda: not node_exists(zk, nodes[1]), 5, what="s1 drained")
    before = zk.exists(nodes[0])
    signal_listener(server, signal.SIGUSR2)
    wait_until(lambda: server.info("zkwatcher")["statename"] == "EXITED", 5, what="exited")

    def digest(path):
        return hashlib.sha256(str(path).encode()).hexdigest()[:12]

    legacy = {}
    for kind, directory in (("session", "/run"), ("drained", "/var/lib")):
        current = f"{directory}/zkwatcher-supervisor/{kind}-{digest(config)}.json"
        legacy[kind] = f"/run/zkwatcher-supervisor/{kind}-{digest(os.path.realpath(config))}.json"
        os.replace(current, legacy[kind])
    consumer = EveryEvent(zk, [nodes[0]])
    server.ctl("start", "zkwatcher")
    log = config.parent / "zkwatcher.log"
    wait_until(lambda: "reattached to session" in log.read_text(), 10, what="reattached")
    time.sleep(1.5)
    assert consumer.events == []
    assert zk.exists(nodes[0]).czxid == before.czxid
    assert not node_exists(zk, nodes[1])  # still drained
    wait_until(lambda: not any(os.path.exists(p) for p in legacy.values()), 5,
               what="the old files removed once the new ones are written")


@pytest.mark.parametrize("directory, needs_drain", [
    ("/run/zkwatcher-supervisor", False), ("/var/lib/zkwatcher-supervisor", True)],
    ids=["session directory opened", "drains not saved"])
def test_handoff_is_refused_when_state_cannot_reach_the_successor(
        write_config, supervisord, zk, base_path, directory, needs_drain):
    """A state directory that others may write from some moment on: the session
    file, or the drains, would not be trusted by the successor — so no hand-over."""
    config = write_config(sections(base_path, 2), session_timeout=10)
    server = supervisord(listener_section(config))
    nodes = [f"{base_path}/s{i}/host1:{i + 1}" for i in range(2)]
    wait_until(lambda: all(node_exists(zk, n) for n in nodes), 20, what="all registered")
    os.makedirs(directory, exist_ok=True)
    mode = os.stat(directory).st_mode & 0o777
    env = {**os.environ, "SUPERVISOR_SERVER_URL": f"unix://{server.workdir}/supervisor.sock"}
    try:
        os.chmod(directory, 0o775)
        if needs_drain:
            drained = subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", "drain",
                                      "s1", "-c", str(config)], capture_output=True, text=True,
                                     env=env, timeout=60)
            assert drained.returncode == 0, drained.stderr
            log = config.parent / "zkwatcher.log"
            wait_until(lambda: "cannot save the drained sections" in log.read_text(), 5,
                       what="the failed save")
        consumer = EveryEvent(zk, nodes[:1])
        pid = listener_pid(server)
        result = handoff(server, config)
        assert result.returncode == 1, result.stdout + result.stderr
        assert ("may be written by others; not trusted" in result.stderr if not needs_drain
                else "refused to hand over" in result.stderr
                and "drained sections are not saved" in result.stderr), result.stderr
        assert listener_pid(server) == pid
        time.sleep(0.5)
        assert consumer.events == []
    finally:
        os.chmod(directory, mode)


def test_handoff_keeps_serverset_and_nerve_nodes_and_never_doubles_them(
        write_config, supervisord, zk, base_path):
    """Sequential nodes are named by ZooKeeper, so the successor must find its
    predecessor's by the saved name: the same node (czxid, owner) afterwards,
    and at no moment a second node for a section."""
    parents = {"ss": f"{base_path}/ss", "nerve": f"{base_path}/nerve"}
    config = write_config(
        section(base_path, "ss", 8001, cmd="true", refresh=5, timeout=None,
                path=parents["ss"], payload_format="serverset")
        + section(base_path, "nerve", 8002, cmd="true", refresh=5, timeout=None,
                  path=parents["nerve"], payload_format="nerve", instance_id="i-0abc"),
        session_timeout=10)
    server = supervisord(listener_section(config))
    for parent in parents.values():
        zk.ensure_path(parent)
    listings: dict[str, list[list[str]]] = {name: [] for name in parents}
    for name, parent in parents.items():
        ChildrenWatch(zk, parent, lambda children, name=name: listings[name].append(
            sorted(children)))
    wait_until(lambda: all(zk.get_children(p) for p in parents.values()), 20,
               what="both registered")
    nodes = [f"{parent}/{child}" for parent in parents.values()
             for child in zk.get_children(parent)]
    assert [posixpath.basename(node)[:-10] for node in nodes] == ["member_", "i-0abc_"]
    before = {node: zk.exists(node) for node in nodes}
    consumer = EveryEvent(zk, nodes)
    old = listener_pid(server)
    result = handoff(server, config)
    assert result.returncode == 0, result.stdout + result.stderr
    owner = before[nodes[0]].ephemeralOwner
    assert f"session 0x{owner:x} kept" in result.stdout
    assert listener_pid(server) not in (0, old)
    log = config.parent / "zkwatcher.log"
    wait_until(lambda: log.read_text().rsplit("watching ", 1)[1].count("healthy: registering") >= 2,
               10, what="the successor's first checks")
    time.sleep(1)  # any second node would have been created by now
    assert consumer.events == []
    for name, parent in parents.items():
        assert all(len(children) <= 1 for children in listings[name]), listings[name]
        assert [f"{parent}/{child}" for child in zk.get_children(parent)] == \
            [node for node in nodes if node.startswith(parent + "/")]
    for node in nodes:
        stat = zk.exists(node)
        assert (stat.czxid, stat.ephemeralOwner) == (before[node].czxid, owner), node
