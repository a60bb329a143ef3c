"""Drain through the supervisorctl plugin beside the standalone command.

    python bench/drain_plugin.py [-n 8]

Starts a local ZooKeeper and a supervisord (the plugin in its config) running a
program and the listener.  For each way of draining —
``zkwatcher-supervisor drain web -c CONFIG`` and ``supervisorctl -c CONF
drain web`` — N times: drain, then undrain, measuring from starting the
command to a separate kazoo client's watch seeing the node deleted (what an
operator waits for: the command's start, supervisord's relay, the listener).
Then once each ``drain web --stop --wait 2``: from the watch seeing the node
deleted to the program receiving SIGTERM (the program records the moment).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

from common import listener_section, web_config
from kazoo.client import KazooClient

from zkwatcher_supervisor.testing import (
    LocalSupervisord,
    LocalZooKeeper,
    term_recorder,
    wait_until,
)

BIN = Path(sys.executable).parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=8, help="drains per way (default 8)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="zkwatcher-drain-plugin-"))
    zookeeper = LocalZooKeeper(work / "zk").start()
    config = web_config(work, zookeeper.hosts)
    server = LocalSupervisord(work / "supervisor", textwrap.dedent(f"""
        [ctlplugin:zkwatcher]
        supervisor.ctl_factory = zkwatcher_supervisor.ctlplugin:make_plugin
        config = {config}
        """) + term_recorder("web", work) + listener_section(config))
    server.start()
    socket = f"unix://{server.workdir}/supervisor.sock"
    ways = {
        "zkwatcher-supervisor drain": lambda *words: [
            str(BIN / "zkwatcher-supervisor"), *words, "-c", str(config), "--serverurl", socket],
        "supervisorctl drain (plugin)": lambda *words: [
            str(BIN / "supervisorctl"), "-c", str(server.config), *words],
    }
    zk = KazooClient(hosts=zookeeper.hosts)
    zk.start()
    node = "/bench/web/host1:80"

    def run(command: list[str]) -> None:
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)}: exit {result.returncode}: "
                               f"{result.stdout}{result.stderr}")

    def watch() -> tuple[threading.Event, list[float]]:
        gone, stamps = threading.Event(), []
        # Both clocks: monotonic for the command's delay, wall for the SIGTERM file.
        zk.exists(node, watch=lambda event: (stamps.extend([time.monotonic(), time.time()]),
                                             gone.set()))
        return gone, stamps

    delays: dict[str, list[float]] = {way: [] for way in ways}
    stops: dict[str, float] = {}
    try:
        wait_until(lambda: zk.exists(node), 30, what="registered")
        for _ in range(args.n):
            for way, command in ways.items():  # interleaved: the machine's noise hits both
                gone, stamps = watch()
                started = time.monotonic()
                run(command("drain", "web"))
                if not gone.wait(10):
                    raise RuntimeError(f"{way}: no deletion seen")
                delays[way].append(stamps[0] - started)
                run(command("undrain", "web"))
                wait_until(lambda: zk.exists(node), 5, what="undrained")
        for way, command in ways.items():
            term = work / "web.term"
            term.unlink(missing_ok=True)
            gone, stamps = watch()
            run(command("drain", "web", "--stop", "--wait", "2"))
            stops[way] = float(term.read_text()) - stamps[1]
            run(command("undrain", "web"))
            server.rpc().supervisor.startProcess("web", True)
            wait_until(lambda: zk.exists(node), 10, what="back after the stop")
        print(f"command start -> a consumer's watch sees the node deleted, n={args.n} each "
              "(interleaved):")
        for way, values in delays.items():
            ms = sorted(value * 1000 for value in values)
            print(f"  {way:30} median {statistics.median(ms):6.0f} ms   "
                  f"min {ms[0]:6.0f} ms   max {ms[-1]:6.0f} ms")
        print("drain web --stop --wait 2: node deleted -> the program's SIGTERM:")
        for way, seconds in stops.items():
            print(f"  {way:30} {seconds:6.2f} s")
    finally:
        zk.stop()
        server.stop()
        zookeeper.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
