"""Floors: what no listener can beat on this machine and this ZooKeeper.

    python bench/floor.py [-n 200]        kill -9 -> znode gone
    python bench/floor.py --start 1000    start-up: creates, spawns of `true`; both (a reference)

The floor under "kill -9 -> znode gone": a pidfd, one kazoo delete, another client's watch.

No listener and no supervisord: the least any tool can do to turn a
process's death into a deletion that a consumer sees.  A deleter process
(this file with ``--deleter HOSTS PATH``, its own interpreter and kazoo
session, like our listener) creates an ephemeral znode, waits on the pidfd of
a ``sleep`` it is told about, and deletes the node the moment the pidfd is
readable.  The measuring process SIGKILLs the ``sleep`` and times, on
CLOCK_MONOTONIC, until its own kazoo client's watch fires.  The figure
measures this machine and ZooKeeper, not any listener; ``kill_detection.py``
prints it beside the listener's figure, sampled in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from common import deletion_watch, summary_ms
from kazoo.client import KazooClient

from zkwatcher_supervisor.testing import LocalZooKeeper, wait_until

# A deleter that hears nothing for this long gives up (bounded wait per round).
DELETER_WAIT = 60.0


class Floor:
    """A deleter process on ``hosts``; :meth:`sample` measures one kill."""

    def __init__(self, hosts: str, path: str, observer: KazooClient) -> None:
        self.path = path
        self.observer = observer
        self.deleter = subprocess.Popen(
            [sys.executable, __file__, "--deleter", hosts, path],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )
        if self.deleter.stdout.readline().strip() != "connected":
            raise RuntimeError("the floor's deleter did not connect to ZooKeeper")

    def sample(self, settle: float = 0.2) -> float:
        """Seconds from SIGKILL of a fresh process to the observer's watch firing."""
        victim = subprocess.Popen(["sleep", "100000"])
        try:
            return self.sample_pid(victim.pid, settle)
        finally:
            victim.kill()
            victim.wait()

    def sample_pid(self, pid: int, settle: float = 0.2) -> float:
        """The same for a process started by someone else (a supervisord program,
        so supervisord's own work on its death happens at the same moment)."""
        self.deleter.stdin.write(f"{pid}\n")
        if self.deleter.stdout.readline().strip() != "watching":
            raise RuntimeError("the floor's deleter stopped")
        gone, at = deletion_watch(self.observer, self.path)
        time.sleep(settle)  # same pause as before a listener kill
        killed = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        if not gone.wait(10):
            raise TimeoutError("the floor's node was not deleted")
        return at[0] - killed

    def close(self) -> None:
        self.deleter.stdin.close()
        try:
            self.deleter.wait(10)
        except subprocess.TimeoutExpired:
            self.deleter.kill()
            self.deleter.wait()


@contextlib.contextmanager
def fresh_client(hosts: str, parent: str) -> Iterator[KazooClient]:
    """A kazoo client of its own, connected, with ``parent`` made; closed after."""
    zk = KazooClient(hosts=hosts, timeout=30)
    zk.start(timeout=30)
    try:
        zk.ensure_path(parent)
        yield zk
    finally:
        zk.stop()
        zk.close()


def create_floor(hosts: str, parent: str, count: int) -> float:
    """Seconds for ``count`` ephemeral creates under ``parent`` through one fresh
    kazoo client, all sent before the first reply is awaited: the least a
    listener's registrations can take once it is connected."""
    with fresh_client(hosts, parent) as zk:
        started = time.monotonic()
        pending = [zk.create_async(f"{parent}/n{i}", b"n=%d" % i, ephemeral=True)
                   for i in range(count)]
        for result in pending:
            result.get(timeout=60)
        return time.monotonic() - started


def spawn_floor(count: int) -> float:
    """Seconds to posix_spawn ``count`` processes of ``true`` and reap them all:
    the least ``count`` command checks can take."""
    true = shutil.which("true")
    started = time.monotonic()
    pids = [os.posix_spawn(true, [true], os.environ) for _ in range(count)]
    for pid in pids:
        os.waitpid(pid, 0)
    return time.monotonic() - started


def check_and_register_reference(hosts: str, parent: str, count: int) -> float:
    """Seconds for one bare process to do the work of a start-up with ``count``
    sections of ``cmd: true``: posix_spawn every check, reap each, and send its
    node's ephemeral create as soon as it is reaped, all pipelined through one
    fresh kazoo client, until the last reply.  Not a strict floor: spawns and
    creates share one interpreter and the machine's cores, and other orders
    exist; of those tried this was the fastest (spawning and reaping in
    batches of 32 took about 10 % longer, one check at a time 50 %).  A
    listener also reads supervisord's events and keeps state on top of this.
    """
    true = shutil.which("true")
    with fresh_client(hosts, parent) as zk:
        started = time.monotonic()
        pids = [os.posix_spawn(true, [true], os.environ) for _ in range(count)]
        pending = []
        for i, pid in enumerate(pids):
            os.waitpid(pid, 0)
            pending.append(zk.create_async(f"{parent}/n{i}", b"n=%d" % i, ephemeral=True))
        for result in pending:
            result.get(timeout=60)
        return time.monotonic() - started


def run_deleter(hosts: str, path: str) -> None:
    """One pid per stdin line: create the node, wait for the pid's death, delete the node."""
    zk = KazooClient(hosts=hosts)
    zk.start(timeout=30)
    print("connected", flush=True)
    poller = select.poll()
    try:
        for line in sys.stdin:
            pidfd = os.pidfd_open(int(line))
            try:
                zk.create(path, ephemeral=True, makepath=True)
                print("watching", flush=True)
                poller.register(pidfd, select.POLLIN)
                poller.poll(DELETER_WAIT * 1000)
                poller.unregister(pidfd)
                zk.delete(path)
            finally:
                os.close(pidfd)
    finally:
        zk.stop()
        zk.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="kills (default 200)")
    parser.add_argument("--start", type=int, metavar="S",
                        help="print the start-up floors for S sections instead")
    parser.add_argument("--deleter", nargs=2, metavar=("HOSTS", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.deleter:
        run_deleter(*args.deleter)
        return 0
    work = Path(tempfile.mkdtemp(prefix="zkwatcher-floor-"))
    zookeeper = LocalZooKeeper(work / "zk").start()
    if args.start:
        try:
            creates = [create_floor(zookeeper.hosts, f"/floor{i}", args.start) for i in range(3)]
            both = [check_and_register_reference(zookeeper.hosts, f"/both{i}", args.start)
                    for i in range(3)]
        finally:
            zookeeper.stop()
        spawns = [spawn_floor(args.start) for _ in range(3)]
        print(f"{args.start} pipelined ephemeral creates, one kazoo client: "
              f"{', '.join(f'{t:.3f}' for t in creates)} s")
        print(f"{args.start} posix_spawns of `true`, reaped:          "
              f"{', '.join(f'{t:.3f}' for t in spawns)} s")
        print(f"{args.start} of both in one process (reference), each create sent "
              "as its check is reaped: "
              f"{', '.join(f'{t:.3f}' for t in both)} s")
        return 0
    observer = KazooClient(hosts=zookeeper.hosts)
    observer.start()
    floor = Floor(zookeeper.hosts, "/floor/node", observer)
    try:
        samples = []
        for _ in range(args.n):
            wait_until(lambda: observer.exists("/floor/node") is None, 10)
            samples.append(floor.sample())
    finally:
        floor.close()
        observer.stop()
        zookeeper.stop()
    print(f"kills: {len(samples)}")
    print(f"pidfd -> kazoo delete -> other client's watch:   {summary_ms(samples)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
