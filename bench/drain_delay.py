"""How fast ``drain`` takes a node out of discovery, and how ``--stop`` orders the stop.

    python bench/drain_delay.py [-n 10]

Starts a local ZooKeeper and a supervisord running a bound program and the
listener.  N times: ``drain`` then ``undrain`` the section, and measure

* listener: from the listener logging the request to logging ZooKeeper's
  confirmation of the deletion (what the listener itself adds), and
* command: from starting ``zkwatcher-supervisor drain`` to a separate kazoo
  client's watch seeing the node deleted (what an operator waits for,
  including the command's own start and supervisord's relay).

Then once ``drain --stop --wait 2``: the gap between the node's deletion (the
watch) and the program receiving SIGTERM (it records the moment).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from common import listener_section, summary_ms, web_config
from kazoo.client import KazooClient

from zkwatcher_supervisor.testing import (
    LocalSupervisord,
    LocalZooKeeper,
    term_recorder,
    wait_until,
)


def log_stamp(log: str, needle: str, nth: int) -> float:
    lines = [line for line in log.splitlines() if needle in line]
    return datetime.strptime(lines[nth][:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10, help="drain/undrain rounds (default 10)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="zkwatcher-drain-"))
    zookeeper = LocalZooKeeper(work / "zk").start()
    config = web_config(work, zookeeper.hosts)
    server = LocalSupervisord(work / "supervisor", term_recorder("web", work)
                              + listener_section(config))
    server.start()
    zk = KazooClient(hosts=zookeeper.hosts)
    zk.start()
    node = "/bench/web/host1:80"
    env = {**os.environ, "SUPERVISOR_SERVER_URL": f"unix://{server.workdir}/supervisor.sock"}

    def cli(*words: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", *words, "-c",
                               str(config)], capture_output=True, text=True, env=env, check=True)

    listener, command = [], []
    try:
        wait_until(lambda: zk.exists(node), 30, what="registered")
        for round_ in range(args.n):
            gone = threading.Event()
            seen: list[float] = []
            zk.exists(node, watch=lambda event, seen=seen, gone=gone: (
                seen.append(time.monotonic()), gone.set()))
            started = time.monotonic()
            cli("drain", "web")
            gone.wait(10)
            command.append(seen[0] - started)
            # The listener writes its log a moment after the fact.
            log = wait_until(lambda n=round_: (text := (work / "zkwatcher.log").read_text())
                             .count(f"deregistered {node}") > n and text, 5,
                             what="deregistration logged")
            listener.append(log_stamp(log, f"deregistered {node}", round_)
                            - log_stamp(log, "[web] drained by", round_))
            cli("undrain", "web")
            wait_until(lambda: zk.exists(node), 5, what="undrained")
        deleted: list[float] = []
        zk.exists(node, watch=lambda event: deleted.append(time.time()))
        cli("drain", "web", "--stop", "--wait", "2")
        term = float((work / "web.term").read_text())
        print(f"drain -> node deleted, n={args.n}:")
        print(f"  listener (request logged -> deletion confirmed): {summary_ms(listener)}")
        print(f"  command (drain started -> a consumer's watch fires): {summary_ms(command)}")
        print(f"drain --stop --wait 2: node deleted -> program's SIGTERM "
              f"{term - deleted[0]:.2f} s")
    finally:
        zk.stop()
        server.stop()
        zookeeper.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
