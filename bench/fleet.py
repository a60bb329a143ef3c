"""A fleet of listeners on one real 3-node ensemble: start, steady state, flaps,
rolling and full ensemble restarts, and the reconnect storm after a full outage.

    python bench/fleet.py --hosts H --sections S [--json] [--tool ours|zk_watcher]
                          [--spread SECONDS] [--supervisord N] [--steady 60]
                          [--flaps 5] [--outages 1] [--phases steady,flap,rolling,restart,outage]

One listener process per simulated host, each with its own ``service_hostname``
and S sections (``program`` + ``cmd = true``, refresh 30) under
``/fleet/svc<j>/<host>:<port>``.  The last N hosts (``--supervisord``) run under a
real supervisord each with S ``sleep`` programs; the others are driven over
pipes by one thread playing supervisord (READY/RESULT, PROCESS_STATE, TICK_5).
With ``--tool zk_watcher`` every host is one zk_watcher 0.4.0 process instead
(one thread per section, ``cmd`` only; flaps go through a flag file its check
tests every second).

Every listener reaches the ensemble through TCP proxies (one set of three per
group of hosts, in a child process), so a full outage can cut every client off
while the servers keep running: their sessions expire, and the restore is the
thundering herd.  New sessions are counted on the servers' side: ``cons`` on
each server, sampled every 0.2 s, lists each connection's session id and the
server's wall-clock time it was established (``est``); a session id not seen
before the outage is a new session, dated by its ``est``.

Consumers connect to the servers directly: a kazoo ``ChildrenWatch`` per
section parent in this process, and nd_service_registry (zk_watcher's library,
run with zk_watcher's virtualenv) in a child process.  Writes are counted as
the leader's zxid advancing.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import multiprocessing
import os
import re
import selectors
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from common import as_installed, percentile
from compare import ProcessStats, peer_command
from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError
from kazoo.recipe.watchers import ChildrenWatch

from zkwatcher_supervisor.testing import (
    FaultProxy,
    LocalSupervisord,
    die_with_parent,
    four_letter_word,
    local_ensemble,
    wait_until,
)

ROOT = Path(__file__).resolve().parent.parent
BASE = "/fleet"
PORT0 = 10000
TICK_EVERY = 5.0
HOSTS_PER_PROXY_SET = 10


def peer_venv() -> Path:
    """zk_watcher 0.4.0's virtualenv: the checkout's .venv-zk_watcher-0.4.0 if
    there is one, else the benchmarks' shared one (installed on first use)."""
    local = ROOT / ".venv-zk_watcher-0.4.0"
    if (local / "bin" / "zk_watcher").exists():
        return local
    return peer_command().parent.parent


# -- the ensemble and the proxies in front of it ---------------------------------------


class Ensemble:
    """Three LocalZooKeeper servers forming one ensemble on 127.0.0.1."""

    def __init__(self, work: Path) -> None:
        self.servers = local_ensemble(work)
        for server in self.servers:
            # Every client here comes from 127.0.0.1, and ZooKeeper accepts only
            # 60 connections per client address by default: a fleet of hosts
            # has one address each, so lift the cap rather than measure it.
            server.extra_config = ["maxClientCnxns=0"]

    @property
    def hosts(self) -> str:
        return ",".join(server.hosts for server in self.servers)

    def start(self) -> None:
        for server in self.servers:  # from the main thread: they die with us
            server.start(wait=False)
        for server in self.servers:
            server.wait_ready(180)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def zxid(self) -> int:
        """The highest zxid any serving member reports (within one epoch: writes)."""
        best = 0
        for server in self.servers:
            try:
                found = re.search(r"Zxid: (0x[0-9a-f]+)", four_letter_word(server.port, "srvr"))
            except OSError:
                continue
            if found:
                best = max(best, int(found.group(1), 16))
        return best

    def sessions(self) -> dict[int, int]:
        """Session id -> when its connection was established (ms, server wall
        clock), over every member, from ``cons``."""
        found: dict[int, int] = {}
        for server in self.servers:
            try:
                text = four_letter_word(server.port, "cons", 2.0)
            except OSError:
                continue
            for sid, est in re.findall(r"sid=0x([0-9a-f]+).*?\best=(\d+)", text):
                found[int(sid, 16)] = int(est)
        return found

    def mntr(self) -> list[dict[str, str]]:
        result = []
        for server in self.servers:
            try:
                result.append(server.mntr())
            except OSError:
                pass
        return result

    def reset_stats(self) -> None:
        for server in self.servers:
            four_letter_word(server.port, "srst")


def _proxy_main(conn, targets: list[int], sets: int) -> None:
    """Child process: ``sets`` x len(targets) FaultProxies; cut/restore on command."""
    die_with_parent()
    proxies = [[FaultProxy(port) for port in targets] for _ in range(sets)]
    conn.send([[proxy.port for proxy in group] for group in proxies])
    while True:
        try:
            command = conn.recv()
        except EOFError:
            return
        for group in proxies:
            for proxy in group:
                if command == "cut":
                    proxy.cut()
                else:
                    proxy.restore()
        conn.send("ok")


class Proxies:
    def __init__(self, targets: list[int], sets: int) -> None:
        context = multiprocessing.get_context("fork")  # before any thread of ours exists
        self._conn, child = context.Pipe()
        self.process = context.Process(target=_proxy_main, args=(child, targets, sets),
                                       daemon=True)
        self.process.start()
        self.sets: list[str] = [",".join(f"127.0.0.1:{port}" for port in group)
                                for group in self._conn.recv()]

    def command(self, what: str) -> None:
        self._conn.send(what)
        self._conn.recv()

    def close(self) -> None:
        self.process.kill()
        self.process.join()


# -- the hosts ---------------------------------------------------------------------


def node_name(host: int) -> str:
    return f"h{host:04d}.fleet"


def node_path(host: int, section: int) -> str:
    return f"{BASE}/svc{section}/{node_name(host)}:{PORT0 + section}"


def our_config(host: int, sections: int, hosts: str, session_timeout: float,
               spread: float | None) -> str:
    lines = ["[zkwatcher]", f"hosts = {hosts}", f"session_timeout = {session_timeout:g}"]
    if spread is not None:
        lines.append(f"reconnect_spread = {spread:g}")
    text = "\n".join(lines) + "\n\n"
    for j in range(sections):
        text += (f"[svc{j}]\nprogram = p{j}\ncmd = true\nrefresh = 30\n"
                 f"service_port = {PORT0 + j}\nservice_hostname = {node_name(host)}\n"
                 f"zookeeper_path = {BASE}/svc{j}\nzookeeper_data = n={j}\n\n")
    return text


def peer_config(host: int, sections: int, flags: Path) -> str:
    text = ""
    for j in range(sections):
        # The flapped section checks every second; the rest as ours, every 30 s.
        refresh = 1 if (host, j) == (0, 0) else 30
        text += (f"[svc{j}]\ncmd: test ! -e {flags}/h{host}-svc{j}\nrefresh: {refresh}\n"
                 f"service_port: {PORT0 + j}\nservice_hostname: {node_name(host)}\n"
                 f"zookeeper_path: {BASE}/svc{j}\nzookeeper_data: n={j}\n\n")
    return text


class _Driven:
    """One listener on pipes: events wait in ``queue`` until it says READY."""

    def __init__(self, index: int, process: subprocess.Popen) -> None:
        self.index = index
        self.process = process
        self.queue: collections.deque[bytes] = collections.deque()
        self.buffer = b""
        self.state = "starting"  # -> ready -> busy -> waiting (for READY) -> ready ...
        self.serial = 0
        self.errors = 0


class FleetDriver(threading.Thread):
    """Plays supervisord's side of the event protocol for many listeners at once,
    from one thread and one selector; sends every listener a TICK_5 every 5 s."""

    def __init__(self) -> None:
        super().__init__(name="fleet-driver", daemon=True)
        self._selector = selectors.DefaultSelector()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self.hosts: dict[int, _Driven] = {}
        self._stopping = False

    def add(self, host: _Driven) -> None:
        with self._lock:
            self.hosts[host.index] = host
            os.set_blocking(host.process.stdout.fileno(), False)
            self._selector.register(host.process.stdout, selectors.EVENT_READ, host)
        self._wake()

    def post(self, index: int, eventname: str, payload: str) -> None:
        with self._lock:
            host = self.hosts[index]
            host.serial += 1
            body = payload.encode()
            host.queue.append(
                (f"ver:3.0 server:supervisor serial:{host.serial} pool:zkwatcher "
                 f"poolserial:{host.serial} eventname:{eventname} len:{len(body)}\n").encode()
                + body)
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def stop(self) -> None:
        self._stopping = True
        self._wake()

    def run(self) -> None:
        next_tick = time.monotonic() + TICK_EVERY
        while not self._stopping:
            for key, _ in self._selector.select(max(0.0, next_tick - time.monotonic())):
                if key.data is None:
                    try:
                        os.read(self._wake_r, 4096)
                    except BlockingIOError:
                        pass
                else:
                    self._read(key.data)
            if time.monotonic() >= next_tick:
                next_tick += TICK_EVERY
                for index in list(self.hosts):
                    self.post(index, "TICK_5", f"when:{int(time.time())}")
            with self._lock:
                for host in self.hosts.values():
                    self._send(host)

    def _read(self, host: _Driven) -> None:
        try:
            chunk = os.read(host.process.stdout.fileno(), 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._selector.unregister(host.process.stdout)
            host.state = "gone"
            return
        host.buffer += chunk
        while True:
            if host.state in ("starting", "waiting") and host.buffer.startswith(b"READY\n"):
                host.buffer = host.buffer[6:]
                host.state = "ready"
            elif host.state == "busy" and host.buffer.startswith(b"RESULT 2\nOK"):
                host.buffer = host.buffer[11:]
                host.state = "waiting"
            else:
                break

    def _send(self, host: _Driven) -> None:
        if host.state == "ready" and host.queue:
            try:
                host.process.stdin.write(host.queue.popleft())
                host.process.stdin.flush()
            except OSError:
                host.state = "gone"
                return
            host.state = "busy"


def process_payload(program: str, from_state: str, pid: int) -> str:
    return f"processname:{program} groupname:{program} from_state:{from_state} pid:{pid}"


# -- consumers ----------------------------------------------------------------------

ND_CONSUMER = r"""
import json, sys, time
import nd_service_registry
server, paths = sys.argv[1], sys.argv[2:]
registry = nd_service_registry.KazooServiceRegistry(server=server, rate_limit_calls=None)
def callback_for(path):
    def callback(data):
        children = sorted((data or {}).get("children") or [])
        print(json.dumps({"t": time.monotonic(), "path": path, "children": children}),
              flush=True)
    return callback
for path in paths:
    registry.get(path, callback=callback_for(path))
sys.stdin.read()
"""


class View:
    """What a consumer sees: the children of every section parent, and when each
    node was last added or removed (time.monotonic(), shared by all processes)."""

    def __init__(self) -> None:
        self.children: dict[str, set[str]] = {}
        self.added: dict[str, float] = {}
        self.removed: dict[str, float] = {}
        self.removals = 0
        self.cond = threading.Condition()

    def update(self, parent: str, children: list[str], stamp: float) -> None:
        with self.cond:
            new, old = set(children), self.children.get(parent, set())
            for child in new - old:
                self.added[f"{parent}/{child}"] = stamp
            for child in old - new:
                self.removed[f"{parent}/{child}"] = stamp
                self.removals += 1
            self.children[parent] = new
            self.cond.notify_all()

    def total(self) -> int:
        with self.cond:
            return sum(len(c) for c in self.children.values())

    def has(self, node: str) -> bool:
        parent, child = node.rsplit("/", 1)
        with self.cond:
            return child in self.children.get(parent, ())

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{what} not seen within {timeout:g}s")
                self.cond.wait(min(left, 0.5))


def watch_with_kazoo(zk: KazooClient, parents: list[str], view: View) -> list[ChildrenWatch]:
    watches = []
    for parent in parents:
        def changed(children, parent=parent) -> None:
            view.update(parent, children, time.monotonic())  # stamped as the consumer sees it
        watches.append(ChildrenWatch(zk, parent, changed))
    return watches


class NdConsumer:
    """nd_service_registry's watcher in zk_watcher's virtualenv, one line per callback."""

    def __init__(self, venv: Path, hosts: str, parents: list[str], view: View,
                 log: Path) -> None:
        self.view = view
        with open(log, "ab") as stderr:
            self.process = subprocess.Popen(
                [str(venv / "bin" / "python"), "-c", ND_CONSUMER, hosts, *parents],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
                preexec_fn=die_with_parent)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            self.view.update(item["path"], item["children"], item["t"])

    def close(self) -> None:
        self.process.kill()
        self.process.wait()


# -- the fleet ----------------------------------------------------------------------


class Fleet:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="zkwatcher-fleet-"))
        self.parents = [f"{BASE}/svc{j}" for j in range(args.sections)]
        self.expected = args.hosts * args.sections
        self.ensemble = Ensemble(self.work)
        self.ensemble.start()
        sets = -(-args.hosts // HOSTS_PER_PROXY_SET)
        self.proxies = Proxies([server.port for server in self.ensemble.servers], sets)
        self.sleeper = subprocess.Popen(["sleep", "1000000"], preexec_fn=die_with_parent)
        self.zk = KazooClient(hosts=self.ensemble.hosts, timeout=30)
        self.zk.start(timeout=60)
        for parent in self.parents:
            self.zk.ensure_path(parent)
        self.view = View()  # the kazoo ChildrenWatch consumer
        self._watches = watch_with_kazoo(self.zk, self.parents, self.view)
        self.nd_view = View()
        self.venv = peer_venv()
        self.nd = NdConsumer(self.venv, self.ensemble.hosts, self.parents, self.nd_view,
                             self.work / "nd_consumer.log")
        self.driver = FleetDriver()
        self.driver.start()
        self.driven: list[int] = []
        self.supervisors: dict[int, LocalSupervisord] = {}
        self.peers: dict[int, subprocess.Popen] = {}
        self.flags = self.work / "flags"
        self.flags.mkdir()

    def proxy_set(self, host: int) -> str:
        return self.proxies.sets[host // HOSTS_PER_PROXY_SET]

    def start_hosts(self) -> None:
        args = self.args
        hosts = range(args.hosts)
        if args.tool == "zk_watcher":
            binary = self.venv / "bin" / "zk_watcher"
            for i in hosts:
                config = self.work / f"peer{i}.cfg"
                config.write_text(peer_config(i, args.sections, self.flags))
                with open(self.work / f"peer{i}.log", "ab") as log:
                    self.peers[i] = subprocess.Popen(
                        [str(binary), "-c", str(config), "-s", self.proxy_set(i)],
                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                        preexec_fn=die_with_parent)
            return
        with_supervisord = set(hosts[len(hosts) - min(args.supervisord, len(hosts)):])
        env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_")}
        for i in hosts:
            if i in with_supervisord:
                continue
            config = self.work / f"host{i}.cfg"
            config.write_text(our_config(i, args.sections, self.proxy_set(i),
                                         args.session_timeout, args.spread))
            with open(self.work / f"host{i}.log", "ab") as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "zkwatcher_supervisor", "-c", str(config)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                    preexec_fn=die_with_parent)
            self.driver.add(_Driven(i, process))
            self.driven.append(i)
            for j in range(args.sections):
                self.driver.post(i, "PROCESS_STATE_RUNNING",
                                 process_payload(f"p{j}", "STARTING", self.sleeper.pid))
        for i in sorted(with_supervisord):
            config = self.work / f"host{i}.cfg"
            config.write_text(our_config(i, args.sections, self.proxy_set(i),
                                         args.session_timeout, args.spread))
            programs = "".join(
                f"[program:p{j}]\ncommand = setpriv --pdeathsig KILL sleep 1000000\n"
                f"startsecs = 0\n\n" for j in range(args.sections))
            self.supervisors[i] = LocalSupervisord(self.work / f"sup{i}", f"""
{programs}
[eventlistener:zkwatcher]
command = {sys.executable} -m zkwatcher_supervisor -c {config}
events = PROCESS_STATE,TICK_5
buffer_size = 1024
startsecs = 0
stderr_logfile = {self.work}/host{i}.log
""").start()

    def listener_pids(self) -> dict[int, int]:
        pids = {i: self.driver.hosts[i].process.pid for i in self.driven}
        pids.update({i: p.pid for i, p in self.peers.items()})
        for i, sup in self.supervisors.items():
            pids[i] = sup.info("zkwatcher")["pid"]
        return pids

    def usage(self) -> dict[int, tuple[float, float]]:
        """CPU seconds (with reaped children: check runs) and RSS MB per listener."""
        found = {}
        for i, pid in self.listener_pids().items():
            stats = ProcessStats(pid)
            try:
                found[i] = (stats.cpu_seconds(), stats.rss_mb())
            except OSError:
                pass
        return found

    def snapshot(self) -> dict[str, int]:
        """Every registered node -> its czxid (a node lost and re-created changes it)."""
        listings = [(parent, self.zk.get_children_async(parent)) for parent in self.parents]
        lookups = []
        for parent, listing in listings:
            try:
                children = listing.get(timeout=30)
            except NoNodeError:
                continue
            lookups += [(f"{parent}/{c}", self.zk.exists_async(f"{parent}/{c}"))
                        for c in children]
        found = {}
        for node, lookup in lookups:
            stat = lookup.get(timeout=30)
            if stat is not None:
                found[node] = stat.czxid
        return found

    def owners(self) -> set[int]:
        lookups = [self.zk.exists_async(node) for node in self.snapshot()]
        return {stat.ephemeralOwner for stat in (lookup.get(timeout=30) for lookup in lookups)
                if stat is not None}

    def close(self) -> None:
        self.driver.stop()
        self.driver.join(5)
        # EOF on stdin is a clean stop: each listener closes its session and
        # removes its session file.  Whatever is still running after that, dies.
        for host in self.driver.hosts.values():
            try:
                host.process.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + 10
        for host in self.driver.hosts.values():
            try:
                host.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                host.process.kill()
                host.process.wait()
        for peer in self.peers.values():
            if peer.poll() is None:
                peer.kill()
                peer.wait()
        for sup in self.supervisors.values():
            sup.stop()
        self.nd.close()
        try:
            self.zk.stop()
            self.zk.close()
        except Exception:
            pass
        self.proxies.close()
        self.sleeper.kill()
        self.sleeper.wait()
        self.ensemble.stop()


# -- phases -------------------------------------------------------------------------


def cold_start(fleet: Fleet, out: dict) -> None:
    started = time.monotonic()
    fleet.start_hosts()
    fleet.view.wait(lambda: fleet.view.total() == fleet.expected, 900, "every node")
    out["all_registered_s"] = time.monotonic() - started
    usage = fleet.usage()
    out["listener_start_cpu_s"] = statistics.median(cpu for cpu, _ in usage.values())
    fleet.nd_view.wait(lambda: fleet.nd_view.total() == fleet.expected, 300,
                       "every node by nd_service_registry")
    out["all_registered_nd_s"] = time.monotonic() - started


def steady(fleet: Fleet, out: dict) -> None:
    window = fleet.args.steady
    time.sleep(5)  # the first check runs and ticks settle
    ensemble = fleet.ensemble
    ensemble.reset_stats()
    before, zxid, started = fleet.usage(), ensemble.zxid(), time.monotonic()
    jvm = [ProcessStats(s.process.pid).cpu_seconds() for s in ensemble.servers]
    outstanding = 0
    while time.monotonic() < started + window:
        for stats in ensemble.mntr():
            outstanding = max(outstanding, int(stats.get("zk_outstanding_requests", 0)))
        time.sleep(1)
    elapsed = time.monotonic() - started
    out["steady_writes_per_s"] = (ensemble.zxid() - zxid) / elapsed
    stats = ensemble.mntr()
    out["zk_avg_latency"] = max(float(s["zk_avg_latency"]) for s in stats)
    out["zk_max_latency"] = max(int(s["zk_max_latency"]) for s in stats)
    out["zk_outstanding_requests"] = outstanding
    out["zk_watch_count"] = sum(int(s.get("zk_watch_count", 0)) for s in stats)
    out["zk_connections"] = sum(int(s.get("zk_num_alive_connections", 0)) for s in stats)
    after = fleet.usage()
    cpu = [(after[i][0] - before[i][0]) / elapsed * 100 for i in after if i in before]
    out["listener_cpu_pct"] = statistics.median(cpu)
    out["listener_cpu_pct_p90"] = percentile(cpu, 0.9)
    out["listener_rss_mb"] = statistics.median(rss for _, rss in after.values())
    out["listener_rss_mb_max"] = max(rss for _, rss in after.values())
    out["listeners_rss_total_mb"] = sum(rss for _, rss in after.values())
    out["ensemble_cpu_pct"] = sum(
        ProcessStats(s.process.pid).cpu_seconds() - cpu0
        for s, cpu0 in zip(ensemble.servers, jvm)) / elapsed * 100
    meminfo = Path("/proc/meminfo").read_text()
    out["mem_available_gb"] = int(re.search(r"MemAvailable:\s+(\d+)", meminfo).group(1)) / 2**20
    out["loadavg_1m"] = float(Path("/proc/loadavg").read_text().split()[0])


def flap(fleet: Fleet, out: dict) -> None:
    """Section 0 of host 0 goes down and comes back, ``--flaps`` times."""
    node = node_path(0, 0)
    watch, nd, writes = [], [], []
    for _ in range(fleet.args.flaps):
        time.sleep(2)
        for going_down in (True, False):
            zxid = fleet.ensemble.zxid()
            triggered = time.monotonic()
            if fleet.args.tool == "zk_watcher":
                flag = fleet.flags / "h0-svc0"
                flag.touch() if going_down else flag.unlink()
            elif going_down:
                fleet.driver.post(0, "PROCESS_STATE_STOPPING",
                                  process_payload("p0", "RUNNING", fleet.sleeper.pid))
            else:
                for event, before in (("STOPPED", "STOPPING"), ("STARTING", "STOPPED"),
                                      ("RUNNING", "STARTING")):
                    fleet.driver.post(0, f"PROCESS_STATE_{event}",
                                      process_payload("p0", before, fleet.sleeper.pid))
            stamps = []
            for view in (fleet.view, fleet.nd_view):
                view.wait(lambda view=view, down=going_down: view.has(node) != down, 30, node)
                stamps.append((view.removed if going_down else view.added)[node] - triggered)
            watch.append(stamps[0])
            nd.append(stamps[1])
            time.sleep(1)  # anything that would follow the one write
            writes.append(fleet.ensemble.zxid() - zxid)
    out["consumer_converge_s"] = statistics.median(watch)
    out["consumer_converge_max_s"] = max(watch)
    out["consumer_converge_nd_s"] = statistics.median(nd)
    out["writes_per_flap"] = statistics.median(writes)
    out["writes_per_flap_max"] = max(writes)


def lost_between(before: dict[str, int], after: dict[str, int]) -> int:
    return sum(1 for node, czxid in before.items() if after.get(node) != czxid)


def rolling_restart(fleet: Fleet, out: dict) -> None:
    ensemble = fleet.ensemble
    before, removals = fleet.snapshot(), fleet.view.removals
    started = time.monotonic()
    order = sorted(ensemble.servers, key=lambda s: s.mode() == "leader")
    for server in order:  # followers first, the leader last, as operators do
        server.stop()
        time.sleep(1)
        server.start(wait=False)
        server.wait_ready(180)
        time.sleep(3)
    out["rolling_restart_s"] = time.monotonic() - started
    time.sleep(5)
    after = fleet.snapshot()
    out["rolling_restart_nodes_lost"] = max(lost_between(before, after),
                                            fleet.view.removals - removals)


def ensemble_restart(fleet: Fleet, out: dict) -> None:
    """All three servers stop, then start: sessions are restored, not expired."""
    ensemble = fleet.ensemble
    before, owners = fleet.snapshot(), fleet.owners()
    for server in ensemble.servers:
        server.stop()
    time.sleep(2)
    started = time.monotonic()
    for server in ensemble.servers:
        server.start(wait=False)
    for server in ensemble.servers:
        server.wait_ready(180)
    out["ensemble_restart_serving_s"] = time.monotonic() - started

    state: dict = {}

    def recovered() -> bool:
        try:
            state["missing_sessions"] = len(owners - set(ensemble.sessions()))
            state["nodes"] = len(fleet.snapshot())
        except Exception as exc:
            state["error"] = repr(exc)
            return False
        return state["missing_sessions"] == 0 and state["nodes"] == fleet.expected

    try:
        wait_until(recovered, 300, interval=0.2, what="every session and node back")
    except TimeoutError:
        raise TimeoutError(f"ensemble restart: not recovered in 300 s: {state}") from None
    out["ensemble_restart_recovery_s"] = time.monotonic() - started
    out["ensemble_restart_nodes_lost"] = lost_between(before, fleet.snapshot())


class SessionSampler(threading.Thread):
    """Every 0.2 s: session ids on every server with their ``est`` (ms)."""

    def __init__(self, ensemble: Ensemble) -> None:
        super().__init__(daemon=True)
        self.ensemble = ensemble
        self.seen: dict[int, int] = {}
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            for sid, est in self.ensemble.sessions().items():
                self.seen.setdefault(sid, est)


def peak_per_second(times: list[float]) -> int:
    """Most events in any window of one second."""
    times, best, first = sorted(times), 0, 0
    for last, t in enumerate(times):
        while t - times[first] >= 1.0:
            first += 1
        best = max(best, last - first + 1)
    return best


def full_outage(fleet: Fleet, out: dict) -> None:
    """Cut every host off for longer than its session timeout, then restore."""
    ensemble, view = fleet.ensemble, fleet.view
    results = collections.defaultdict(list)
    for _ in range(fleet.args.outages):
        old = set(ensemble.sessions())
        usage = fleet.usage()
        fleet.proxies.command("cut")
        cut = time.monotonic()
        # Each session expires one timeout after its last contact.
        view.wait(lambda: view.total() == 0, fleet.args.session_timeout + 60, "expiry")
        results["expired_after_s"].append(time.monotonic() - cut)
        sampler = SessionSampler(ensemble)
        sampler.start()
        time.sleep(0.5)
        restored_wall, restored = time.time(), time.monotonic()
        fleet.proxies.command("restore")
        view.wait(lambda: view.total() == fleet.expected, 600, "every node back")
        results["full_outage_recovery_s"].append(time.monotonic() - restored)
        time.sleep(1)
        sampler.stopping.set()
        sampler.join()
        new = [est / 1000 - restored_wall for sid, est in sampler.seen.items() if sid not in old]
        results["new_sessions"].append(len(new))
        results["reconnect_peak_per_s"].append(peak_per_second(new))
        results["reconnect_span_s"].append(max(new) - min(new) if new else 0.0)
        per_host = []
        for i in range(fleet.args.hosts):
            per_host.append(max(view.added[node_path(i, j)]
                                for j in range(fleet.args.sections)) - restored)
        results["host_recovery_p50_s"].append(statistics.median(per_host))
        results["host_recovery_min_s"].append(min(per_host))
        after = fleet.usage()
        results["listener_outage_cpu_s"].append(statistics.median(
            after[i][0] - usage[i][0] for i in after if i in usage))
        time.sleep(5)
    for key, values in results.items():
        out[key] = statistics.median(values)
        out[f"{key}_all"] = [round(v, 3) for v in values]


PHASES = {"steady": steady, "flap": flap, "rolling": rolling_restart,
          "restart": ensemble_restart, "outage": full_outage}


def table(out: dict) -> str:
    rows = [(key, value) for key, value in out.items() if not key.endswith("_all")]
    width = max(len(key) for key, _ in rows)
    lines = []
    for key, value in rows:
        if isinstance(value, float):
            value = f"{value:.3f}"
        extra = out.get(f"{key}_all")
        lines.append(f"{key:<{width}}  {value}" + (f"   {extra}" if extra else ""))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=10)
    parser.add_argument("--sections", type=int, default=10)
    parser.add_argument("--tool", choices=("ours", "zk_watcher"), default="ours")
    parser.add_argument("--spread", type=float, default=None,
                        help="reconnect_spread for every host (default: the key's default)")
    parser.add_argument("--supervisord", type=int, default=3,
                        help="hosts run under a real supervisord (ours only)")
    parser.add_argument("--session-timeout", type=float, default=10.0)
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of steady state")
    parser.add_argument("--flaps", type=int, default=5)
    parser.add_argument("--outages", type=int, default=1)
    parser.add_argument("--phases", default=",".join(PHASES))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    as_installed()
    phases = [p for p in args.phases.split(",") if p]
    unknown = set(phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phases: {', '.join(sorted(unknown))}")
    # SIGTERM ends the run through the finally below; SIGKILL through PDEATHSIG.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    logging.getLogger("kazoo").setLevel(logging.ERROR)  # our consumer's reconnects
    out: dict = {"tool": args.tool, "hosts": args.hosts, "sections": args.sections,
                 "spread": args.spread, "session_timeout": args.session_timeout}
    began = time.monotonic()
    fleet = Fleet(args)
    try:
        cold_start(fleet, out)
        for phase in phases:
            PHASES[phase](fleet, out)
            print(f"# {phase} done at {time.monotonic() - began:.0f}s", file=sys.stderr,
                  flush=True)
    finally:
        out["work"] = str(fleet.work)
        out["bench_s"] = time.monotonic() - began
        # Also when a phase failed: what was measured before it still counts.
        print(table(out), flush=True)
        if args.json:
            print(json.dumps(out), flush=True)
        fleet.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
