"""How fast a killed program's znode disappears, beside the floor and supervisord's EXITED.

    python bench/kill_detection.py [-n 200]

Starts a local ZooKeeper and supervisord running a bound program, the
zkwatcher listener and a second, bare listener that timestamps supervisord's
PROCESS_STATE events.  Then N times: SIGKILL the program and measure, on one
clock (CLOCK_MONOTONIC), the delay until

* a separate kazoo client's watch sees the znode deleted, and
* supervisord delivers PROCESS_STATE_EXITED for that pid.

supervisord restarts the program after each kill and the node comes back
before the next round.  Each round also takes two samples of the floor
(``floor.py``: pidfd -> kazoo delete -> watch, no listener) on the same
ZooKeeper, so all see the same machine load: one kills a plain child of this
script, the other a second supervisord program (``victim``), so that
supervisord reaping and restarting it competes for the CPU at that moment,
as it does when the listener's program is killed.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import deletion_watch, listener_section, percentile, summary_ms, web_config
from floor import Floor
from kazoo.client import KazooClient

from zkwatcher_supervisor.testing import LocalSupervisord, LocalZooKeeper, wait_until

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="kills (default 200)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="zkwatcher-bench-"))
    zookeeper = LocalZooKeeper(work / "zk").start()
    config = web_config(work, zookeeper.hosts, port=8080, hostname="bench")
    events_file = work / "events.txt"
    supervisord = LocalSupervisord(work / "supervisor", f"""
[program:web]
command = sleep 100000
startsecs = 0
autorestart = true

[program:victim]
command = sleep 100000
startsecs = 0
autorestart = true

{listener_section(config, events="PROCESS_STATE,TICK_5")}
[eventlistener:recorder]
command = {sys.executable} {HERE / "exited_recorder.py"} {events_file}
events = PROCESS_STATE
buffer_size = 1024
""").start()
    zk = KazooClient(hosts=zookeeper.hosts)
    zk.start()
    node = "/bench/web/bench:8080"
    floor: Floor | None = None
    deletions: list[float] = []
    exits: list[float] = []
    floors: list[float] = []
    supervised_floors: list[float] = []
    try:
        floor = Floor(zookeeper.hosts, "/bench/floor", zk)
        for _ in range(args.n):
            floors.append(floor.sample())
            wait_until(lambda: supervisord.info("victim")["statename"] == "RUNNING", 10,
                       what="victim RUNNING")
            victim = supervisord.info("victim")["pid"]
            supervised_floors.append(floor.sample_pid(victim))
            # supervisord restarts it: let that finish before the listener's round.
            wait_until(lambda v=victim: (info := supervisord.info("victim"))["statename"]
                       == "RUNNING" and info["pid"] != v, 10, what="victim restarted")
            wait_until(lambda: zk.exists(node), 10, what="registration")
            wait_until(lambda: supervisord.info("web")["statename"] == "RUNNING", 10,
                       what="web RUNNING")
            pid = supervisord.info("web")["pid"]
            deleted, stamp = deletion_watch(zk, node)
            time.sleep(0.2)  # let everything settle
            killed = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            if not deleted.wait(10):
                raise TimeoutError("node was not deleted")
            deletions.append(stamp[0] - killed)

            def exited_at(pid=pid):
                for line in events_file.read_text().splitlines():
                    name, event_pid, at = line.split()
                    if name == "PROCESS_STATE_EXITED" and int(event_pid) == pid:
                        return float(at)
                return None

            exits.append(wait_until(exited_at, 10, what="EXITED event") - killed)
        server = zookeeper.mntr()
    finally:
        if floor is not None:
            floor.close()
        zk.stop()
        supervisord.stop()
        zookeeper.stop()

    late = [d - e for d, e in zip(deletions, exits)]
    print(f"kills: {len(deletions)}")
    print(f"kill -> znode deleted (kazoo watch):   {summary_ms(deletions)}")
    print(f"floor: pidfd -> delete -> watch:       {summary_ms(floors)}")
    print(f"floor, supervised program:             {summary_ms(supervised_floors)}")
    for label, base in (("floor", floors), ("supervised floor", supervised_floors)):
        print(f"{'ours / ' + label + ':':<39}"
              f"p50 {statistics.median(deletions) / statistics.median(base):8.2f}x      "
              f"p99 {percentile(deletions, 0.99) / percentile(base, 0.99):8.2f}x")
    met = "met" if percentile(deletions, 0.99) <= 0.010 else "MISSED"
    print(f"target p99 <= 10 ms:                   {met}")
    print(f"kill -> supervisord EXITED event:      {summary_ms(exits)}")
    print(f"deletion minus EXITED, worst run:      {max(late) * 1000:+.1f} ms")
    ahead = sum(d < e for d, e in zip(deletions, exits))
    print(f"node gone before EXITED arrived:       {ahead}/{len(deletions)} runs")
    print(f"ZooKeeper's own write latency (mntr):  p50 {server['zk_p50_updatelatency']} ms   "
          f"p99 {server['zk_p99_updatelatency']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
