"""How long Prometheus keeps a target after our node for it is deleted.

    python bench/prometheus_delay.py [-n 10] [--format serverset|nerve]

Starts a local ZooKeeper, a supervisord running a program and the listener
(one section bound to it, in the given payload format) and Debian's
Prometheus with ``serverset_sd_configs`` or ``nerve_sd_configs`` on the
section's path.  N times: stop the program, and measure from a separate kazoo
client's watch seeing the node deleted to the target's absence from
Prometheus' ``/api/v1/targets`` (polled every 20 ms); then start it again and
wait for the target to return.  Prometheus' discovery manager passes changes on
in batches (every 5 s by default), so expect up to that much.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from common import deletion_watch, listener_section, summary_ms, web_config
from kazoo.client import KazooClient

from zkwatcher_supervisor.testing import LocalSupervisord, LocalZooKeeper, wait_until
from zkwatcher_supervisor.testing.consumers import LocalPrometheus

ADDRESS = "127.0.0.1:8080"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10, help="stop/start rounds (default 10)")
    parser.add_argument("--format", choices=("serverset", "nerve"), default="serverset")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="zkwatcher-prometheus-"))
    zookeeper = LocalZooKeeper(work / "zk").start()
    path = "/bench/web"
    config = web_config(work, zookeeper.hosts, port=8080, hostname="127.0.0.1", path=path,
                        extra=f"payload_format = {args.format}\n")
    zk = KazooClient(hosts=zookeeper.hosts)
    zk.start()
    zk.ensure_path(path)
    prometheus = LocalPrometheus(work / "prometheus", zookeeper.hosts,
                                 {"web": (args.format, [path])}).start()
    server = LocalSupervisord(work / "supervisor", textwrap.dedent("""
        [program:web]
        command = sleep 100000
        startsecs = 0
        stopsignal = KILL
        """) + listener_section(config))
    server.start()
    delays = []
    try:
        for _ in range(args.n):
            wait_until(lambda: ADDRESS in prometheus.targets("web"), 60, interval=0.1,
                       what="target listed")
            (child,) = zk.get_children(path)
            gone, stamp = deletion_watch(zk, f"{path}/{child}")
            server.rpc().supervisor.stopProcess("web", False)
            if not gone.wait(10):
                raise RuntimeError("node not deleted within 10 s")
            wait_until(lambda: ADDRESS not in prometheus.targets("web"), 60, interval=0.02,
                       what="target dropped")
            delays.append(time.monotonic() - stamp[0])
            server.rpc().supervisor.startProcess("web", False)
        print(f"{args.format}: node deleted -> gone from Prometheus' /api/v1/targets, "
              f"n={args.n}: median {statistics.median(delays):.2f} s; {summary_ms(delays)}")
    finally:
        zk.stop()
        server.stop()
        prometheus.stop()
        zookeeper.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
