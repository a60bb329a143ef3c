"""How many lines the listener logs while ZooKeeper is away.

    python bench/outage_log.py [--seconds 120] [--how kill|cut] [--sections 3]

Starts a local ZooKeeper and a supervisord running the listener with a few
healthy sections.  Once they are registered, ZooKeeper goes away for
``--seconds``: ``kill`` stops the server (SIGKILL, restarted on the same data
afterwards: the session survives), ``cut`` drops the connections through a
proxy and refuses new ones while the server keeps running (it expires the
session).  Then waits until every node is back and a few seconds more, and
prints the number of lines the listener logged from the start of the outage,
each distinct message with its count (and the lines themselves when few).
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import textwrap
import time
from collections import Counter
from pathlib import Path

from kazoo.client import KazooClient

from zkwatcher_supervisor.testing import FaultProxy, LocalSupervisord, LocalZooKeeper, wait_until

SETTLE = 5.0  # seconds after the nodes are back, for trailing lines
SHOW_LINES = 30  # fewer lines than this are printed as they are


def line_kind(line: str) -> str:
    """A log line without its timestamp, numbers and session ids, to count alike lines."""
    text = line[24:] if re.match(r"\d{4}-\d\d-\d\d ", line) else line
    return re.sub(r"0x[0-9a-f]+|\d+(\.\d+)?", "#", text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0,
                        help="how long ZooKeeper stays away (default 120)")
    parser.add_argument("--how", choices=["kill", "cut"], default="kill",
                        help="kill the server, or cut the link to it (default kill)")
    parser.add_argument("--sections", type=int, default=3, help="healthy sections (default 3)")
    parser.add_argument("--session-timeout", type=float, default=10.0,
                        help="the listener's session_timeout (default 10)")
    parser.add_argument("-v", "--verbose", action="store_true", help="run the listener with -v")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="zkwatcher-outage-"))
    zookeeper = LocalZooKeeper(work / "zk").start()
    proxy = FaultProxy(zookeeper.port) if args.how == "cut" else None
    hosts = proxy.hosts if proxy else zookeeper.hosts
    config = work / "zkwatcher.cfg"
    log_path = work / "zkwatcher.log"
    body = f"[zkwatcher]\nhosts = {hosts}\nsession_timeout = {args.session_timeout:g}\n\n"
    nodes = []
    for index in range(args.sections):
        body += textwrap.dedent(f"""
            [s{index}]
            cmd = true
            refresh = 1
            service_port = {1000 + index}
            service_hostname = host1
            zookeeper_path = /outage/s{index}
            """)
        nodes.append(f"/outage/s{index}/host1:{1000 + index}")
    config.write_text(body)
    flags = " -v" if args.verbose else ""
    supervisord = LocalSupervisord(work / "supervisor", textwrap.dedent(f"""
        [eventlistener:zkwatcher]
        command = {sys.executable} -m zkwatcher_supervisor -c {config}{flags}
        events = PROCESS_STATE,TICK_5,REMOTE_COMMUNICATION
        buffer_size = 1024
        startsecs = 0
        autorestart = true
        stderr_logfile = {log_path}
        """)).start()
    zk = KazooClient(hosts=zookeeper.hosts, timeout=10)
    zk.start(timeout=30)

    def log_lines() -> list[str]:
        return log_path.read_text(errors="replace").splitlines() if log_path.exists() else []

    try:
        wait_until(lambda: all(zk.exists(node) for node in nodes), 30, what="registration")
        time.sleep(2)  # the start-up lines are written
        before = len(log_lines())
        owner = zk.exists(nodes[0]).ephemeralOwner
        pid = supervisord.info("zkwatcher")["pid"]
        zk.stop()
        if proxy:
            proxy.cut()
        else:
            zookeeper.kill()
        started = time.monotonic()
        time.sleep(args.seconds)
        during = len(log_lines()) - before
        if proxy:
            proxy.restore()
        else:
            zookeeper.start()
        back = time.monotonic()
        zk.start(timeout=30)
        wait_until(lambda: all(zk.exists(node) for node in nodes), 60, interval=0.05,
                   what="nodes back")
        recovered = time.monotonic() - back
        time.sleep(SETTLE)
        lines = log_lines()[before:]
        same_session = zk.exists(nodes[0]).ephemeralOwner == owner
        same_pid = supervisord.info("zkwatcher")["pid"] == pid
        print(f"ZooKeeper away ({args.how}) for {back - started:.0f} s, {args.sections} "
              f"section(s), session_timeout {args.session_timeout:g} s"
              f"{', -v' if args.verbose else ''}")
        print(f"nodes back {recovered:.2f} s after ZooKeeper was; same session: {same_session}; "
              f"same listener pid: {same_pid}")
        print(f"lines logged: {during} during the outage, {len(lines)} in all "
              f"(up to {SETTLE:g} s after the nodes were back)")
        for kind, count in Counter(line_kind(line) for line in lines).most_common():
            print(f"{count:6d}  {kind}")
        if len(lines) <= SHOW_LINES:
            print("the lines:")
            print("\n".join(lines))
        return 0
    finally:
        zk.stop()
        zk.close()
        supervisord.stop()
        if proxy:
            proxy.close()
        zookeeper.stop()


if __name__ == "__main__":
    sys.exit(main())
