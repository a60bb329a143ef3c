"""An upgrade as an operator does it: a listener of an earlier version, handed over
to this one with this version's ``handoff``.  Prints what a consumer saw.

    python bench/upgrade_handoff.py [--from REVISION] [--sections 5]

The earlier version is taken from git (``git archive REVISION``) and run from a
temporary directory under a real supervisord, against a real ZooKeeper, as
root (its state then lives in /run as it did).  While it runs: one section is
drained with the earlier version's own command, and one with this version's
``drain --for`` (which such a listener reads as an absolute end).  Then the
command line supervisord runs is switched to this version, ``handoff`` runs,
and the script reports its exit status, whether every node kept its session
and czxid, every watch event a consumer saw, and whether both drains survived.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import textwrap
import time
from io import BytesIO
from pathlib import Path

from kazoo.client import KazooClient

from zkwatcher_supervisor.testing import LocalSupervisord, LocalZooKeeper, wait_until

REPO = Path(__file__).resolve().parent.parent


def earlier_version(revision: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision,
                              "zkwatcher_supervisor"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into)
    return into


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="revision", default="fc5c1c9")
    parser.add_argument("--sections", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="zkw-upgrade-"))
    old_code = earlier_version(args.revision, work / "old")
    zookeeper = LocalZooKeeper(work / "zookeeper").start()
    server = None
    try:
        base = f"/upgrade-{os.getpid()}"
        # A release symlink, as many hosts have: the earlier version named its
        # files after where it points, this one after the path as given.
        config = work / "zkwatcher.cfg"
        config.symlink_to(work / "v1.cfg")
        body = f"[zkwatcher]\nhosts = {zookeeper.hosts}\nsession_timeout = 10\n"
        for i in range(args.sections):
            body += textwrap.dedent(f"""
                [s{i}]
                cmd = true
                refresh = 2
                service_port = {i + 1}
                service_hostname = host1
                zookeeper_path = {base}/s{i}
                """)
        (work / "v1.cfg").write_text(body)
        which = work / "pythonpath"
        which.write_text(str(old_code))
        python, module = sys.executable, "zkwatcher_supervisor"
        server = LocalSupervisord(work / "supervisor", textwrap.dedent(f"""
            [eventlistener:zkwatcher]
            command = sh -c 'PYTHONPATH=$(cat {which}) exec {python} -m {module} -c {config}'
            events = PROCESS_STATE,TICK_5,REMOTE_COMMUNICATION
            buffer_size = 1024
            directory = {work}
            stderr_logfile = {work}/zkwatcher.log
            """)).start()
        zk = KazooClient(hosts=zookeeper.hosts)
        zk.start(timeout=30)
        nodes = [f"{base}/s{i}/host1:{i + 1}" for i in range(args.sections)]
        wait_until(lambda: all(zk.exists(n) for n in nodes), 30, what="registered")
        env = {**os.environ, "SUPERVISOR_SERVER_URL": f"unix://{server.workdir}/supervisor.sock"}

        def cli(code: Path | None, *command: str) -> subprocess.CompletedProcess:
            run_env = {**env, "PYTHONPATH": str(code)} if code else env
            return subprocess.run([sys.executable, "-m", "zkwatcher_supervisor", *command,
                                   "-c", str(config)], capture_output=True, text=True,
                                  env=run_env, timeout=60, cwd=work)

        time.sleep(1)  # the earlier listener's status file is written
        old_drain = cli(old_code, "drain", "s0", "--reason", "by the earlier command")
        new_drain = cli(None, "drain", "s1", "--for", "1h", "--reason", "by this command")
        for result in (old_drain, new_drain):
            print(f"drain: exit {result.returncode} {result.stdout.strip()} "
                  f"{result.stderr.strip()}", flush=True)
        wait_until(lambda: not zk.exists(nodes[0]) and not zk.exists(nodes[1]), 5,
                   what="both drained")
        kept = nodes[2:]
        before = {n: zk.exists(n) for n in kept}
        events: list[tuple[str, str]] = []

        def watch(path: str) -> None:
            def fired(event) -> None:
                events.append((event.type, event.path))
                watch(path)
            zk.exists(path, watch=fired)

        for n in kept:
            watch(n)
        which.write_text("")  # supervisord's next start runs this version
        started = time.monotonic()
        handoff = cli(None, "handoff")
        took = time.monotonic() - started
        time.sleep(3)
        after = {n: zk.exists(n) for n in kept}
        same = all(after[n] is not None and
                   (after[n].czxid, after[n].ephemeralOwner) ==
                   (before[n].czxid, before[n].ephemeralOwner) for n in kept)
        status = cli(None, "status")
        drained = [n for n in nodes[:2] if not zk.exists(n)]
        print(f"earlier version: {args.revision}; {args.sections} sections")
        print(f"earlier drain command: exit {old_drain.returncode} "
              f"{old_drain.stdout.strip() or old_drain.stderr.strip()}")
        print(f"this version's drain --for against the earlier listener: exit "
              f"{new_drain.returncode} {new_drain.stdout.strip() or new_drain.stderr.strip()}")
        print(f"handoff: exit {handoff.returncode} in {took:.2f}s: "
              f"{(handoff.stdout or handoff.stderr).strip()}")
        print(f"nodes kept with the same czxid and session: {same} ({len(kept)} nodes)")
        print(f"watch events a consumer saw: {len(events)} {events}")
        print(f"drains still in force after the upgrade: {len(drained)} of 2")
        print(f"status after: exit {status.returncode}")
        print(json.dumps({"handoff_exit": handoff.returncode, "same_nodes": same,
                          "events": len(events), "drains_kept": len(drained)}))
        zk.stop()
        return 0 if handoff.returncode == 0 and same and not events and len(drained) == 2 \
            else 1
    finally:
        if server is not None:
            server.stop()
        zookeeper.stop()


if __name__ == "__main__":
    sys.exit(main())
