"""zkwatcher-supervisor beside Nextdoor's zk_watcher 0.4.0, in one run, on one ZooKeeper.

    python bench/compare.py detection [-n 30] [--refresh 5] [--pace 10]
                                                  check starts failing -> znode deleted
    python bench/compare.py kill [-n 30]          program SIGKILLed -> znode deleted
    python bench/compare.py scale [--sizes 10,100,1000] [--window 60] [--check true|tcp]
                                  [--repeat 1] [--user NAME] [--tools ours,zk_watcher]
    python bench/compare.py recovery [--sections 1000]
    python bench/compare.py soak [--sections 1000] [--minutes 10]

zk_watcher is installed from PyPI (zk-watcher==0.4.0) into its own virtualenv
under ~/.cache/zkwatcher-bench on first use.  Both tools read the same
config.cfg format (each its own copy, with its own zookeeper_path prefix, so a
separate kazoo client can tell their nodes apart); ours runs under a real
supervisord with TICK_5, zk_watcher as the standalone daemon it is.  Figures
are medians (and p99) over repeated measurements, with the ratio
zk_watcher / ours.  ``scale`` also prints our start-up as phases, each from
supervisord's start, beside the floors (bench/floor.py) measured in the same
run; it names threads with py-spy when it is installed (``pip install
py-spy``), else by their comm.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

from common import as_installed, deletion_watch, percentile
from floor import check_and_register_reference, create_floor, spawn_floor
from kazoo.client import KazooClient

from zkwatcher_supervisor.testing import (
    FaultProxy,
    LocalSupervisord,
    LocalZooKeeper,
    four_letter_word,
    wait_until,
)

PEER_VENV = Path.home() / ".cache" / "zkwatcher-bench" / "zk_watcher-0.4.0"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def peer_command() -> Path:
    """zk_watcher's entry point: the checkout's .venv-zk_watcher-0.4.0 if there is
    one, else installed into the benchmarks' own virtualenv if needed."""
    local = Path(__file__).resolve().parent.parent / ".venv-zk_watcher-0.4.0" / "bin" / "zk_watcher"
    if local.exists():
        return local
    binary = PEER_VENV / "bin" / "zk_watcher"
    if not binary.exists():
        print(f"installing zk-watcher==0.4.0 into {PEER_VENV} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
        subprocess.run([str(PEER_VENV / "bin" / "pip"), "install", "-q", "zk-watcher==0.4.0"],
                       check=True)
    return binary


def sections(count: int, prefix: str, cmd: str, refresh: int = 5, extra: str = "") -> str:
    """``count`` zk_watcher-style sections; both tools read this text unchanged."""
    return "".join(
        f"[svc{i}]\ncmd: {cmd}\nrefresh: {refresh}\nservice_port: {10000 + i}\n"
        f"service_hostname: bench\nzookeeper_path: {prefix}/svc\nzookeeper_data: n={i}\n"
        f"{extra}\n"
        for i in range(count)
    )


class ProcessStats:
    """CPU (including reaped children, so check forks count), RSS and threads from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def started(self) -> float:
        """When the process started, on the CLOCK_BOOTTIME scale."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19]) / CLOCK_TICKS

    def cpu_split(self) -> tuple[float, float]:
        """(user, system) CPU seconds, reaped children included."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        return (utime + cutime) / CLOCK_TICKS, (stime + cstime) / CLOCK_TICKS

    def cpu_seconds(self) -> float:
        return sum(self.cpu_split())

    def rss_mb(self) -> float:
        return int(Path(f"/proc/{self.pid}/statm").read_text().split()[1]) * PAGE / 2**20

    def threads(self) -> int:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))


class Bench:
    """A ZooKeeper, a supervisord for our listener, and zk_watcher, all local."""

    def __init__(self, session_timeout: int = 10) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="zkwatcher-compare-"))
        self.zookeeper = LocalZooKeeper(self.work / "zk").start()
        self.session_timeout = session_timeout
        self.zk = KazooClient(hosts=self.zookeeper.hosts, timeout=30)
        self.zk.start()
        self.supervisord: LocalSupervisord | None = None
        self.peer: subprocess.Popen | None = None
        self.launched = 0.0  # wall time at which the last tool was started

    def start_ours(self, config_text: str, hosts: str | None = None,
                   programs: str = "") -> ProcessStats:
        config = self.work / "ours.cfg"
        config.write_text(config_text)
        self.supervisord = LocalSupervisord(self.work / "supervisor", f"""
{programs}
[eventlistener:zkwatcher]
command = {sys.executable} -m zkwatcher_supervisor -c {config} -s {hosts or self.zookeeper.hosts}
events = PROCESS_STATE,TICK_5
buffer_size = 1024
startsecs = 0
stderr_logfile = {self.work}/ours.log
""")
        self.launched = time.time()
        self.supervisord.start()
        wait_until(lambda: self.supervisord.info("zkwatcher")["statename"] == "RUNNING", 10)
        return ProcessStats(self.supervisord.info("zkwatcher")["pid"])

    def start_peer(self, config_text: str, hosts: str | None = None) -> ProcessStats:
        config = self.work / "peer.cfg"
        config.write_text(config_text)
        self.launched = time.time()
        with open(self.work / "peer.log", "ab") as log:
            self.peer = subprocess.Popen(
                [str(peer_command()), "-c", str(config), "-s", hosts or self.zookeeper.hosts],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        return ProcessStats(self.peer.pid)

    def stop_ours(self) -> None:
        if self.supervisord is not None:
            self.supervisord.stop()
            self.supervisord = None

    def stop_peer(self) -> None:
        if self.peer is not None and self.peer.poll() is None:
            self.peer.terminate()
            try:
                self.peer.wait(30)
            except subprocess.TimeoutExpired:
                self.peer.kill()
                self.peer.wait()
        self.peer = None

    def registered(self, prefix: str) -> int:
        """How many of one tool's nodes exist (all sections share one parent).

        The parent's stat counts them: polled every 20 ms, a listing of a
        thousand children would cost the machine more than the tools measured.
        """
        stat = self.zk.exists(f"{prefix}/svc")
        return 0 if stat is None else stat.numChildren

    def zxid(self) -> int:
        text = four_letter_word(self.zookeeper.port, "srvr")
        return int(re.search(r"Zxid: (0x[0-9a-f]+)", text).group(1), 16)

    def close(self) -> None:
        self.stop_ours()
        self.stop_peer()
        self.zk.stop()
        self.zk.close()
        self.zookeeper.stop()


def row(label: str, ours: list[float], peer: list[float], unit: str = "ms",
        scale: float = 1000.0) -> str:
    o, p = statistics.median(ours) * scale, statistics.median(peer) * scale
    ratio = f"{p / o:8.1f}x" if o else "       -"
    return (f"{label:<34} {o:10.1f} {unit:<3} {p:10.1f} {unit:<3} {ratio}"
            f"   (p99 {percentile(ours, 0.99) * scale:.1f} / {percentile(peer, 0.99) * scale:.1f})")


HEADER = f"{'':<34} {'ours':>14} {'zk_watcher':>14} {'ratio':>9}"


def quantile_rows(ours: list[float], peer: list[float]) -> str:
    """p50, p99 and max of both tools in seconds, with zk_watcher / ours."""
    lines = [f"{'':<6} {'ours':>9} {'zk_watcher':>11} {'zk_watcher/ours':>16}"]
    for label, pick in (("p50", statistics.median),
                        ("p99", lambda v: percentile(v, 0.99)), ("max", max)):
        o, p = pick(ours), pick(peer)
        lines.append(f"{label:<6} {o:>8.3f}s {p:>10.3f}s {p / o:>15.2f}x")
    return "\n".join(lines)


def detection(args) -> None:
    """A check starts failing: both tools watch the same flag file with the same refresh."""
    refresh = args.refresh
    bench = Bench()
    flag = bench.work / "flag"
    flag.touch()
    try:
        bench.start_ours(sections(1, "/ours", f"test -f {flag}", refresh=refresh))
        bench.start_peer(sections(1, "/peer", f"test -f {flag}", refresh=refresh))
        ours, peer = [], []
        round_start = time.monotonic()
        for _ in range(args.n):
            wait_until(lambda: bench.registered("/ours") and bench.registered("/peer"), 20)
            # zk_watcher's ZooKeeper client (nd_service_registry) throttles once
            # its last 50 calls average under 2 s apart; a round costs it about
            # four calls, so rounds start at least --pace s apart to measure
            # its check cycle rather than its rate limiter.
            time.sleep(max(0.0, round_start + args.pace - time.monotonic()))
            round_start = time.monotonic()
            # Fail at a moment uniform over two whole check cycles: our cycle
            # is exactly ``refresh`` (zk_watcher's a few ms longer), so the
            # failure lands at a uniform phase of it, whatever moment the
            # re-registration that ended the last round happened at.
            time.sleep(random.uniform(0, 2 * refresh))
            ours_gone, ours_at = deletion_watch(bench.zk, "/ours/svc/bench:10000")
            peer_gone, peer_at = deletion_watch(bench.zk, "/peer/svc/bench:10000")
            flag.unlink()
            failed = time.monotonic()
            if not (ours_gone.wait(refresh + 20) and peer_gone.wait(refresh + 20)):
                raise TimeoutError("a node was not deleted")
            ours.append(ours_at[0] - failed)
            peer.append(peer_at[0] - failed)
            flag.touch()
    finally:
        bench.close()
    throttled = (bench.work / "peer.log").read_text().count("Throttling")
    print(f"check starts failing -> znode deleted, refresh {refresh} s, n={len(ours)} "
          f"(failure uniform over the cycle, rounds >= {args.pace:g} s apart)")
    print(quantile_rows(ours, peer))
    print(f"zk_watcher rate-limiter throttles during the run: {throttled}")
    target = refresh + 0.1
    met = "met" if percentile(ours, 0.99) <= target else "MISSED"
    print(f"target: our p99 <= {target:.1f} s: {met}")


def kill(args) -> None:
    """A program is SIGKILLed: ours follows it; zk_watcher checks supervisorctl status."""
    bench = Bench()
    try:
        programs = "[program:web]\ncommand = sleep 100000\nstartsecs = 0\nautorestart = true\n"
        our_config = sections(1, "/ours", "true").replace("cmd: true\n", "program: web\n")
        bench.start_ours(our_config, programs=programs)
        status = (f"{sys.executable} -m supervisor.supervisorctl "
                  f"-c {bench.supervisord.config} status web")
        bench.start_peer(sections(1, "/peer", status))
        ours, peer = [], []
        for _ in range(args.n):
            wait_until(lambda: bench.registered("/ours") and bench.registered("/peer"), 30)
            time.sleep(random.uniform(0, 5))
            pid = bench.supervisord.info("web")["pid"]
            ours_gone, ours_at = deletion_watch(bench.zk, "/ours/svc/bench:10000")
            peer_gone, peer_at = deletion_watch(bench.zk, "/peer/svc/bench:10000")
            killed = time.monotonic()
            os.kill(pid, 9)
            if not ours_gone.wait(20):
                raise TimeoutError("our node was not deleted")
            ours.append(ours_at[0] - killed)
            # zk_watcher only notices if its poll lands while web is down (about
            # 1 s before supervisord restarts it); count a miss as never.
            if peer_gone.wait(8):
                peer.append(peer_at[0] - killed)
    finally:
        bench.close()
    print(f"program SIGKILLed (supervisord restarts it) -> znode deleted, n={len(ours)}")
    print(HEADER)
    if peer:
        print(row("delay (median)", ours, peer))
    else:
        print(f"{'delay (median)':<34} {statistics.median(ours) * 1000:10.1f} ms  "
              f"{'never':>14}            (p99 {percentile(ours, 0.99) * 1000:.1f})")
    print(f"kills noticed: ours {len(ours)}/{len(ours)}, zk_watcher {len(peer)}/{len(ours)}")


class AcceptServer:
    """A loopback port that accepts and closes every connection, so port probes pass."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
        self.sock.settimeout(0.5)  # so close() is noticed within half a second
        self.port = self.sock.getsockname()[1]
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="accept", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        self._closing.set()
        self._thread.join(5)
        self.sock.close()


# The check each tool runs for ``--check``: ours, zk_watcher's.  zk_watcher has
# no built-in port probe and splits ``cmd`` on spaces without a shell, so its
# probe is bash's /dev/tcp in a single word (nc is not installed here).
CHECKS = {
    "true": ("true", "true"),
    "tcp": ("tcp://127.0.0.1:{port}", "bash -c exec<>/dev/tcp/127.0.0.1/{port}"),
}


def py_spy() -> str | None:
    """py-spy beside our interpreter or on PATH: it names a process's Python threads."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def thread_names(pid: int) -> list[str]:
    """Every thread of ``pid``: its Python name where py-spy can tell, else its comm.

    CPython 3.11 leaves every thread's comm as the interpreter's name, so the
    comm alone cannot tell kazoo's threads from ours.
    """
    names: dict[int, str] = {}
    tool = py_spy()
    if tool is not None:
        dump = subprocess.run([tool, "dump", "--pid", str(pid)], capture_output=True,
                              text=True, timeout=60).stdout
        names = {int(tid): name for tid, name in
                 re.findall(r'^Thread (\d+) \([^)]*\): "(.*)"$', dump, re.M)}
    result = []
    for task in sorted(os.listdir(f"/proc/{pid}/task"), key=int):
        try:
            comm = Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError):
            continue  # a short-lived thread (zk_watcher starts one per check run)
        result.append(names.get(int(task), f"comm={comm}"))
    return result


# Targets of the threads kazoo's threading handler starts (its connection loop
# and callback workers), as Python names them: "Thread-4 (zk_loop)".
KAZOO_THREADS = ("(zk_loop)", "(_thread_worker)")


def counted(names: list[str]) -> str:
    """Thread names as "a, b x3": duplicates folded, Thread-N numbers dropped."""
    folded = collections.Counter(re.sub(r"^Thread-\d+", "Thread", name) for name in names)
    return ", ".join(f"{name} x{n}" if n > 1 else name for name, n in folded.items())


class ScaleRun(NamedTuple):
    """One tool's run in ``scale``; times in seconds, from the tool's start
    (supervisord's for ours, zk_watcher's own process for zk_watcher)."""

    all_up: float  # until a separate client first counts every node
    start_cpu: float  # CPU seconds of the tool's process (and its checks) until then
    cpu: float  # % of one CPU in the steady window
    rss: float  # MB after the window
    system: float  # kernel share of that CPU, %
    phases: dict[str, float]  # ours only: each start-up phase's end, from its log
    create_floor: float  # S pipelined creates through one kazoo client, this run
    spawn_floor: float  # S posix_spawns of `true`, reaped, this run
    reference: float  # both in one bare process (floor.check_and_register_reference)


# Our start-up phases, each ended by the first (or last) log line that says so.
PHASES = (
    ("listener up", "first", re.compile(r"watching \d+ section")),
    ("connected", "first", re.compile(r"connected to ZooKeeper")),
    # A pass that makes a section healthy is logged as "healthy: registering".
    ("last check result", "last",
     re.compile(r"\] (check (passed|failed)|healthy: registering)")),
)


def log_phases(log_text: str, started: float) -> dict[str, float]:
    """Seconds from ``started`` (wall time) to each of PHASES, read from our log."""
    found: dict[str, float] = {}
    for line in log_text.splitlines():
        try:
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        for name, which, pattern in PHASES:
            if (which == "last" or name not in found) and pattern.search(line):
                found[name] = stamp - started
    return found


def scale(args) -> None:
    """S sections, refresh 5: time to register, then CPU, RSS and threads in a steady window.

    Each tool runs alone (not beside the other), ``--repeat`` times per size;
    figures are medians over the repeats, ratios taken within the same run.
    """
    ours_cmd, peer_cmd = CHECKS[args.check]
    server = AcceptServer() if args.check == "tcp" else None
    port = server.port if server else 0
    tools = args.tools.split(",")
    extra = f"user: {args.user}\n" if args.user else ""
    print(f"S sections, refresh 5 s, steady window {args.window} s, {args.repeat} run(s) each")
    print(f"checks: ours `{ours_cmd.format(port=port)}`, "
          f"zk_watcher `{peer_cmd.format(port=port)}`" + (f", user {args.user}" if extra else ""))
    print("all up: from supervisord's start (ours) or zk_watcher's process start, until a "
          "separate kazoo client counts every node")
    print(f"{'S':>6} {'tool':<11} {'all up':>8} {'CPU %':>7} {'RSS MB':>7} {'threads':>8} "
          f"{'ZK writes/min':>14}")
    try:
        for count in [int(s) for s in args.sizes.split(",")]:
            medians: dict[str, tuple[float, float]] = {}
            for tool in tools:
                cmd = (ours_cmd if tool == "ours" else peer_cmd).format(port=port)
                runs = [scale_once(args, count, tool, cmd, extra) for _ in range(args.repeat)]
                medians[tool] = (statistics.median(run.cpu for run in runs),
                                 statistics.median(run.rss for run in runs))
                print(f"{count:>6} {tool:<11} {'median':>8} {medians[tool][0]:>7.2f} "
                      f"{medians[tool][1]:>7.1f}", flush=True)
                print(f"{'':>6} {tool} over {len(runs)} run(s): "
                      f"all up {median_range([r.all_up for r in runs], '.2f')} s, "
                      f"CPU until then {median_range([r.start_cpu for r in runs], '.2f')} s; "
                      f"CPU {median_range([r.cpu for r in runs], '.2f')} %, "
                      f"of which system (kernel) {median_range([r.system for r in runs], '.0f')}"
                      f" %; RSS {median_range([r.rss for r in runs], '.1f')} MB", flush=True)
                if tool == "ours":
                    print_phases(count, runs)
            if len(medians) == 2:
                (ours_cpu, ours_rss), (peer_cpu, peer_rss) = (medians["ours"],
                                                              medians["zk_watcher"])
                cpu = f"CPU {peer_cpu / ours_cpu:.1f}x, " if ours_cpu else ""  # --window 0
                print(f"{count:>6} zk_watcher/ours: {cpu}RSS {peer_rss / ours_rss:.1f}x",
                      flush=True)
    finally:
        if server is not None:
            server.close()


def print_phases(count: int, runs: list[ScaleRun]) -> None:
    """Our start-up phases (medians, ranges) beside the floors measured in the same runs."""
    names = [name for name, _, _ in PHASES] + ["last node"]
    print(f"{'':>6} start-up phases, each from supervisord's start:")
    for name in names:
        ends = [run.phases[name] for run in runs if name in run.phases]
        if ends:
            print(f"{'':>8} {name:<20} {median_range(ends, '.2f')} s")
    registering = [run.phases["last node"] - run.phases["connected"] for run in runs
                   if "connected" in run.phases]
    creates = [run.create_floor for run in runs]
    spawns = [run.spawn_floor for run in runs]
    both = [run.reference for run in runs]
    print(f"{'':>8} {'connected -> last node':<20} {median_range(registering, '.2f')} s")
    print(f"{'':>6} floors (same runs): {count} pipelined creates through one kazoo client "
          f"{median_range(creates, '.2f')} s; {count} posix_spawns of `true`, reaped "
          f"{median_range(spawns, '.2f')} s; reference: both in one bare process, each "
          f"create sent as its check is reaped {median_range(both, '.2f')} s")
    timed = [run for run in runs if "connected" in run.phases]
    for name, floor_of in (("the creates' floor", lambda run: run.create_floor),
                           ("the reference", lambda run: run.reference)):
        ratios = [(run.phases["last node"] - run.phases["connected"]) / floor_of(run)
                  for run in timed]
        met = sum(1 for run in timed if run.phases["last node"] - run.phases["connected"]
                  <= 1.3 * floor_of(run) + 0.3)
        print(f"{'':>6} connected -> last node / {name}, per run: "
              f"{median_range(ratios, '.2f')}x; within 1.3x that + 0.3 s in "
              f"{met}/{len(runs)} run(s)")
    print(f"{'':>6} supervisord start -> last node <= 2.0 s in "
          f"{sum(1 for run in runs if run.phases['last node'] <= 2.0)}/{len(runs)}", flush=True)


def median_range(values: list[float], form: str) -> str:
    """"median (min-max)" of ``values``."""
    return (f"{statistics.median(values):{form}} "
            f"({min(values):{form}}-{max(values):{form}})")


def scale_once(args, count: int, tool: str, cmd: str, extra: str = "") -> ScaleRun:
    """One tool with ``count`` sections: prints a row and returns the run's figures."""
    bench = Bench()
    try:
        creates = create_floor(bench.zookeeper.hosts, "/floor", count)
        spawns = spawn_floor(count)
        both = check_and_register_reference(bench.zookeeper.hosts, "/both", count)
        prefix = f"/{tool}"
        text = sections(count, prefix, cmd, extra=extra)
        stats = bench.start_ours(text) if tool == "ours" else bench.start_peer(text)
        wait_until(lambda: bench.registered(prefix) == count, 300, interval=0.02)
        all_up = time.time() - bench.launched
        start_cpu = stats.cpu_seconds()
        phases = {}
        if tool == "ours":
            phases = log_phases((bench.work / "ours.log").read_text(errors="replace"),
                                bench.launched)
            phases["last node"] = all_up
        cpu = system = 0.0
        writes = 0.0
        if args.window:
            time.sleep(6)  # let start-up writes settle before the window opens
            (user0, system0), zxid0 = stats.cpu_split(), bench.zxid()
            time.sleep(args.window)
            user1, system1 = stats.cpu_split()
            used = (user1 - user0) + (system1 - system0)
            cpu = used / args.window * 100
            system = (system1 - system0) / used * 100 if used else 0.0
            writes = (bench.zxid() - zxid0) * 60 / args.window
        if bench.registered(prefix) != count:
            print(f"warning: {tool} holds {bench.registered(prefix)}/{count} nodes "
                  "after the window")
        rss = stats.rss_mb()
        print(f"{count:>6} {tool:<11} {all_up:>7.2f}s {cpu:>7.2f} {rss:>7.1f} "
              f"{stats.threads():>8} {writes:>14.0f}", flush=True)
        if args.window:
            names = thread_names(stats.pid)
            kazoo = [name for name in names if name.endswith(KAZOO_THREADS)]
            own = [name for name in names if not name.endswith(KAZOO_THREADS)]
            print(f"{'':>6} threads: kazoo {len(kazoo)} ({counted(kazoo)}); "
                  f"other {len(own)} ({counted(own)})", flush=True)
        return ScaleRun(all_up, start_cpu, cpu, rss, system, phases, creates, spawns, both)
    finally:
        bench.close()


def recovery(args) -> None:
    """Sessions expire with S registered: time until all S are back, for both tools.

    Each round starts both tools afresh, cuts their links for longer than the
    10 s session timeout, restores them and waits up to ``--cap`` seconds.
    """
    count = args.sections
    results: dict[str, list[float]] = {"ours": [], "zk_watcher": []}
    back_at_cap: dict[str, list[int]] = {"ours": [], "zk_watcher": []}
    for _ in range(args.n):
        bench = Bench()
        ours_proxy = FaultProxy(bench.zookeeper.port)
        peer_proxy = FaultProxy(bench.zookeeper.port)
        try:
            bench.start_ours(sections(count, "/ours", "true"), hosts=ours_proxy.hosts)
            bench.start_peer(sections(count, "/peer", "true"), hosts=peer_proxy.hosts)
            wait_until(lambda b=bench: b.registered("/ours") == count
                       and b.registered("/peer") == count, 300, interval=0.1)
            ours_proxy.cut()
            peer_proxy.cut()
            # Both sessions time out server-side (10 s negotiated) and their nodes go.
            wait_until(lambda b=bench: b.registered("/ours") == 0
                       and b.registered("/peer") == 0, 60, interval=0.1)
            ours_proxy.restore()
            peer_proxy.restore()
            restored = time.monotonic()
            done: dict[str, float] = {}
            while len(done) < 2 and time.monotonic() - restored < args.cap:
                for tool, prefix in (("ours", "/ours"), ("zk_watcher", "/peer")):
                    if tool not in done and bench.registered(prefix) == count:
                        done[tool] = time.monotonic() - restored
                time.sleep(0.01)
            for tool, prefix in (("ours", "/ours"), ("zk_watcher", "/peer")):
                results[tool].append(done.get(tool, float("inf")))
                back_at_cap[tool].append(bench.registered(prefix))
        finally:
            bench.close()
            ours_proxy.close()
            peer_proxy.close()
    print(f"session expiry with S={count} registered -> all back after the link returns, "
          f"n={args.n}, cap {args.cap} s")
    for tool in results:
        times = ", ".join("never" if t == float("inf") else f"{t:.2f}s" for t in results[tool])
        print(f"{tool:<11} all back after: {times}   nodes back by the cap: {back_at_cap[tool]}")


def soak(args) -> None:
    """S sections for a long time: RSS and CPU at start and end, both tools side by side."""
    bench = Bench()
    count = args.sections
    try:
        tools = {
            "ours": bench.start_ours(sections(count, "/ours", "true")),
            "zk_watcher": bench.start_peer(sections(count, "/peer", "true")),
        }
        wait_until(lambda: bench.registered("/ours") == count
                   and bench.registered("/peer") == count, 300, interval=0.1)
        time.sleep(10)
        start = {t: (s.rss_mb(), s.cpu_seconds(), s.threads()) for t, s in tools.items()}
        minute_cpu = {t: [] for t in tools}
        for _ in range(args.minutes):
            before = {t: s.cpu_seconds() for t, s in tools.items()}
            time.sleep(60)
            for t, s in tools.items():
                minute_cpu[t].append((s.cpu_seconds() - before[t]) / 60 * 100)
        print(f"soak: S={count}, {args.minutes} min, both running side by side")
        print(f"{'tool':<11} {'RSS start':>10} {'RSS end':>9} {'threads':>12} "
              f"{'CPU % 1st min':>14} {'CPU % last min':>15}")
        for t, s in tools.items():
            rss0, _, threads0 = start[t]
            print(f"{t:<11} {rss0:>9.1f}M {s.rss_mb():>8.1f}M {threads0:>5} -> {s.threads():<4} "
                  f"{minute_cpu[t][0]:>14.1f} {minute_cpu[t][-1]:>15.1f}")
    finally:
        bench.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    for name in ("detection", "kill"):
        sub = commands.add_parser(name)
        sub.add_argument("-n", type=int, default=30)
    commands.choices["detection"].add_argument(
        "--refresh", type=int, default=5, help="check refresh, seconds (default 5)")
    commands.choices["detection"].add_argument(
        "--pace", type=float, default=10.0,
        help="least seconds between rounds, so zk_watcher's rate limiter stays idle")
    sub = commands.add_parser("scale")
    sub.add_argument("--sizes", default="10,100,1000")
    sub.add_argument("--window", type=int, default=60, help="steady-state seconds")
    sub.add_argument("--check", choices=sorted(CHECKS), default="true",
                     help="true: a forked `true`; tcp: a probe of a local listening port")
    sub.add_argument("--repeat", type=int, default=1, help="runs per tool and size")
    sub.add_argument("--user", help="run every check as this user (forked, not posix_spawned)")
    sub.add_argument("--tools", default="ours,zk_watcher", help="which tools to run")
    sub = commands.add_parser("recovery")
    sub.add_argument("--sections", type=int, default=1000)
    sub.add_argument("-n", type=int, default=3)
    sub.add_argument("--cap", type=float, default=60.0, help="seconds to wait per round")
    sub = commands.add_parser("soak")
    sub.add_argument("--sections", type=int, default=1000)
    sub.add_argument("--minutes", type=int, default=10)
    args = parser.parse_args()
    peer_command()
    as_installed()
    {"detection": detection, "kill": kill, "scale": scale, "recovery": recovery,
     "soak": soak}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
