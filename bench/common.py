"""Helpers shared by the benchmark scripts: percentiles, a deletion stopwatch, the
listener's config and eventlistener section."""

from __future__ import annotations

import compileall
import math
import statistics
import sys
import textwrap
import threading
import time
from pathlib import Path

from kazoo.client import KazooClient


def as_installed() -> None:
    """Write the package's bytecode, as pip does when it installs it.  Without
    it, a PYTHONDONTWRITEBYTECODE in the environment (or an unwritable
    checkout) has every listener compile each of its modules at every start
    (at 10 sections: 1.3 MB more resident, 0.05 s more CPU until registered),
    unlike a listener as installed and unlike zk_watcher, which pip installed."""
    package = Path(__file__).resolve().parent.parent / "zkwatcher_supervisor"
    compileall.compile_dir(str(package), quiet=1)


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 50 samples is the 50th smallest)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def summary_ms(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"p50 {statistics.median(ms):8.1f} ms   p99 {percentile(ms, 0.99):8.1f} ms   "
            f"max {max(ms):8.1f} ms")


def deletion_watch(zk: KazooClient, path: str) -> tuple[threading.Event, list[float]]:
    """Arm a watch on ``path``: the event is set, and the list gets the
    CLOCK_MONOTONIC time, when ``zk`` hears that the node went."""
    fired, stamp = threading.Event(), []

    def watch(event) -> None:
        # Stamp first: this runs on kazoo's event thread, as late as a consumer would see it.
        stamp.append(time.monotonic())
        fired.set()

    if zk.exists(path, watch=watch) is None:
        raise RuntimeError(f"{path} is not registered")
    return fired, stamp


def web_config(work: Path, hosts: str, port: int = 80, hostname: str = "host1",
               path: str = "/bench/web", extra: str = "") -> Path:
    """``work/zkwatcher.cfg``: the ZooKeeper at ``hosts`` and one section, web, bound
    to the program web and registered as ``hostname:port`` under ``path``; ``extra``
    is more lines of that section."""
    config = work / "zkwatcher.cfg"
    config.write_text(f"[zkwatcher]\nhosts = {hosts}\n\n[web]\nprogram = web\n"
                      f"service_port = {port}\nservice_hostname = {hostname}\n"
                      f"zookeeper_path = {path}\n{extra}")
    return config


def listener_section(config: Path,
                     events: str = "PROCESS_STATE,TICK_5,REMOTE_COMMUNICATION") -> str:
    """supervisord's section running the listener with ``config``; it logs to
    zkwatcher.log beside that file."""
    return textwrap.dedent(f"""
        [eventlistener:zkwatcher]
        command = {sys.executable} -m zkwatcher_supervisor -c {config}
        events = {events}
        buffer_size = 1024
        startsecs = 0
        stderr_logfile = {config.parent}/zkwatcher.log
        """)
