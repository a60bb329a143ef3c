"""The figures behind README "Guarantees": what the tests bound, measured properly here.

    python bench/guarantees.py [-n 30] [--expiries 5]

The tests assert each guarantee's bound (with margin for a busy machine); this
script measures how far inside the bound the listener actually stays, as
p50 / p99 / max over repeated rounds, on one local ZooKeeper and a real
supervisord:

* answer time (supervisord's own BUSY period per event, from its debug log)
  while a check hangs, and while ZooKeeper is down;
* ZooKeeper serving again -> nodes right (a change made during the outage);
* a node deleted by hand -> back (a consumer's watch);
* session expiry (link cut past the session timeout) -> nodes back, counted
  from the link's return and from the listener's new session.

Figures depend on the machine: run it on a quiet one and quote it with the
machine's size.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import summary_ms
from kazoo.client import KazooClient

from zkwatcher_supervisor.testing import (
    FaultProxy,
    LocalSupervisord,
    LocalZooKeeper,
    log_time,
    wait_until,
)

SESSION_TIMEOUT = 4  # seconds; expiry rounds wait this long per round
HANG_TIMEOUT = 3  # seconds the hanging check runs before it is killed


def summary(values: list[float]) -> str:
    return f"n {len(values):4}   {summary_ms(values)}"


def connected_after(log: Path, after: float) -> float | None:
    """When the listener logged its (re)connection at or after ``after``, if it did."""
    try:
        return log_time(log.read_text, "connected to ZooKeeper", after)
    except TimeoutError:
        return None


class Setup:
    """ZooKeeper (reached through a proxy) and supervisord running the listener."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.zookeeper = LocalZooKeeper(work / "zk")
        self.proxy: FaultProxy | None = None
        self.supervisord: LocalSupervisord | None = None
        self.zk: KazooClient | None = None
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        work = self.work
        self.zookeeper.start()
        self.proxy = FaultProxy(self.zookeeper.port)
        self.hang = work / "hang"
        config = work / "zkwatcher.cfg"
        config.write_text(f"""[zkwatcher]
hosts = {self.proxy.hosts}
session_timeout = {SESSION_TIMEOUT}
# The listener's own recovery, without the fleet's random wait before it.
reconnect_spread = 0

[svc]
cmd = true
refresh = 1
service_port = 1
service_hostname = bench
zookeeper_path = /bench/svc

[hanging]
cmd = sh -c 'if [ -f {self.hang} ]; then sleep 60; fi'
refresh = 1
timeout = {HANG_TIMEOUT}
service_port = 2
service_hostname = bench
zookeeper_path = /bench/hanging

[web]
program = web
service_port = 3
service_hostname = bench
zookeeper_path = /bench/web
""")
        self.log = work / "zkwatcher.log"
        self.supervisord = LocalSupervisord(work / "supervisor", f"""
[program:web]
command = sleep 100000
startsecs = 0

[program:churn]
command = sleep 100000
startsecs = 0

[eventlistener:zkwatcher]
command = {sys.executable} -m zkwatcher_supervisor -c {config}
events = PROCESS_STATE,TICK_5
buffer_size = 1024
startsecs = 0
stderr_logfile = {self.log}
""", loglevel="debug").start()
        self.zk = KazooClient(hosts=self.zookeeper.hosts, timeout=30)
        self.zk.start()
        self.nodes = ["/bench/svc/bench:1", "/bench/hanging/bench:2", "/bench/web/bench:3"]
        wait_until(lambda: all(self.zk.exists(n) for n in self.nodes), 30, what="registration")

    def churn(self, restarts: int) -> None:
        """Events for the listener: each restart is four PROCESS_STATE events."""
        for _ in range(restarts):
            self.supervisord.ctl("restart", "churn")

    def busy_since(self, count_before: int) -> list[float]:
        return self.supervisord.busy_periods()[count_before:]

    def close(self) -> None:
        if self.zk is not None:
            self.zk.stop()
            self.zk.close()
        if self.supervisord is not None:
            self.supervisord.stop()
        if self.proxy is not None:
            self.proxy.close()
        self.zookeeper.stop()


def answers_while_a_check_hangs(setup: Setup, restarts: int) -> list[float]:
    before = len(setup.supervisord.busy_periods())
    setup.hang.touch()
    try:
        time.sleep(1.5)  # the next run of the check starts, and hangs
        setup.churn(restarts)
    finally:
        setup.hang.unlink()
    time.sleep(HANG_TIMEOUT)  # the hung run is killed before the next phase
    return setup.busy_since(before)


def outage(setup: Setup, restarts: int) -> tuple[list[float], float, float | None]:
    """ZooKeeper down for 5 s with events flowing and web stopped meanwhile.

    Returns the BUSY periods, and the seconds from ZooKeeper serving again
    (and from the listener's reconnect) to web's node being gone: the change
    made during the outage applied."""
    before = len(setup.supervisord.busy_periods())
    setup.zookeeper.kill()
    started = time.monotonic()
    setup.supervisord.ctl("stop", "web")
    setup.churn(restarts)
    time.sleep(max(0.0, 5 - (time.monotonic() - started)))
    setup.zookeeper.start()
    back_wall, back = time.time(), time.monotonic()
    probe = KazooClient(hosts=setup.zookeeper.hosts)  # a fresh client connects at once
    probe.start(timeout=10)
    try:
        wait_until(lambda: probe.exists(setup.nodes[2]) is None, 30, interval=0.002,
                   what="web deregistered")
    finally:
        probe.stop()
        probe.close()
    applied, applied_wall = time.monotonic() - back, time.time()
    connected = connected_after(setup.log, back_wall)
    after_reconnect = None if connected is None else max(0.0, applied_wall - connected)
    wait_until(lambda: setup.zk.connected, 60, what="consumer reconnected")
    setup.supervisord.ctl("start", "web")
    wait_until(lambda: setup.zk.exists(setup.nodes[2]), 10, what="web registered again")
    return setup.busy_since(before), applied, after_reconnect


def deleted_by_hand(setup: Setup, rounds: int) -> list[float]:
    node = setup.nodes[0]
    delays = []
    for _ in range(rounds):
        back = threading.Event()
        stamp: list[float] = []

        def watch(event, back=back, stamp=stamp) -> None:
            stamp.append(time.monotonic())
            back.set()

        setup.zk.delete(node)
        deleted = time.monotonic()
        if setup.zk.exists(node, watch=watch) is not None:
            stamp.append(deleted)  # back before the watch was even set
            back.set()
        if not back.wait(10):
            raise TimeoutError(f"{node} did not come back")
        delays.append(stamp[0] - deleted)
        time.sleep(0.2)
    return delays


def session_expiries(setup: Setup, rounds: int) -> tuple[list[float], list[float]]:
    from_restore, from_session = [], []
    for _ in range(rounds):
        owner = setup.zk.exists(setup.nodes[0]).ephemeralOwner
        setup.proxy.cut()
        wait_until(lambda: all(setup.zk.exists(n) is None for n in setup.nodes),
                   SESSION_TIMEOUT * 3, interval=0.05, what="session expiry")
        restored_wall, restored = time.time(), time.monotonic()
        setup.proxy.restore()
        wait_until(lambda: all(setup.zk.exists(n) for n in setup.nodes), 10, interval=0.005,
                   what="nodes back")
        from_restore.append(time.monotonic() - restored)
        stat = setup.zk.exists(setup.nodes[0])
        assert stat.ephemeralOwner != owner
        connected = connected_after(setup.log, restored_wall)
        if connected is not None:
            latest = max(setup.zk.exists(n).ctime for n in setup.nodes) / 1000
            from_session.append(max(0.0, latest - connected))
    return from_restore, from_session


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30,
                        help="rounds of deletion by hand, and churn restarts per window")
    parser.add_argument("--expiries", type=int, default=5, help="session expiry rounds")
    args = parser.parse_args()
    logging.getLogger("kazoo").setLevel(logging.ERROR)  # the outages are on purpose

    setup = Setup(Path(tempfile.mkdtemp(prefix="zkwatcher-guarantees-")))
    try:
        hanging = answers_while_a_check_hangs(setup, args.n)
        down, applied, after_reconnect = outage(setup, args.n)
        by_hand = deleted_by_hand(setup, args.n)
        from_restore, from_session = session_expiries(setup, args.expiries)
    finally:
        setup.close()

    print("answer to supervisord (BUSY period per event):")
    print(f"  while a check hangs:                 {summary(hanging)}")
    print(f"  while ZooKeeper is down:             {summary(down)}")
    print(f"change made during the outage applied: {applied * 1000:.0f} ms after ZooKeeper "
          "served again (the client's reconnect back-off included)"
          + ("" if after_reconnect is None else
             f", {after_reconnect * 1000:.0f} ms after the listener reconnected"))
    print(f"node deleted by hand -> back:          {summary(by_hand)}")
    print("session expiry -> every node back:")
    print(f"  from the link's return:              {summary(from_restore)}")
    if from_session:
        print(f"  from the new session (log, 1 ms):    {summary(from_session)}"
              + ("" if len(from_session) == len(from_restore) else
                 f"   ({len(from_restore) - len(from_session)} round(s) without a log line)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
