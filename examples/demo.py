"""Demo: a local ZooKeeper, supervisord from examples/, and znodes coming and going.

    python examples/demo.py

Starts ZooKeeper on 127.0.0.1:2181 and supervisord with examples/supervisord.conf
(program "web" plus the zkwatcher listener configured by examples/zkwatcher.cfg),
then stops and starts things and prints every change under /services as a
separate ZooKeeper client sees it.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from kazoo.client import KazooClient

from zkwatcher_supervisor.testing import LocalZooKeeper, four_letter_word, wait_until

EXAMPLES = Path(__file__).resolve().parent
WORKDIR = Path("/tmp/zkwatcher-demo")
PATHS = ["/services/web", "/services/flag"]
START = time.monotonic()


def say(text: str) -> None:
    print(f"[{time.monotonic() - START:6.1f}s] {text}", flush=True)


def watch_nodes(zk: KazooClient, seen: dict[str, set[str]]) -> None:
    """Print every node that appears or disappears under PATHS."""
    lock = threading.Lock()
    for path in PATHS:
        zk.ensure_path(path)
        seen[path] = set()

        def changed(children, path=path):
            with lock:
                now = set(children)
                for child in sorted(now - seen[path]):
                    data, _ = zk.get(f"{path}/{child}")
                    say(f"  + {path}/{child}  {data.decode()}")
                for child in sorted(seen[path] - now):
                    say(f"  - {path}/{child}")
                seen[path] = now

        zk.ChildrenWatch(path, changed)


def ctl(*args: str) -> None:
    say("$ supervisorctl " + " ".join(args))
    subprocess.run(
        [sys.executable, "-m", "supervisor.supervisorctl", "-c",
         str(EXAMPLES / "supervisord.conf"), *args],
        check=False, stdout=subprocess.DEVNULL,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    try:
        four_letter_word(2181, "ruok", timeout=0.5)
        print("something already listens on 127.0.0.1:2181; stop it first", file=sys.stderr)
        return 1
    except OSError:
        pass
    if shutil.which("zkwatcher-supervisor") is None:
        print("zkwatcher-supervisor is not on PATH: pip install -e .", file=sys.stderr)
        return 1
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir(parents=True)

    say("starting ZooKeeper on 127.0.0.1:2181")
    zookeeper = LocalZooKeeper(WORKDIR / "zookeeper", port=2181).start()
    supervisord = None
    zk = KazooClient(hosts="127.0.0.1:2181")
    zk.start()
    try:
        seen: dict[str, set[str]] = {}
        watch_nodes(zk, seen)
        say("starting supervisord -c examples/supervisord.conf (program web + zkwatcher)")
        supervisord = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-c",
             str(EXAMPLES / "supervisord.conf")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        )
        web = "/services/web"
        flag = "/services/flag"
        wait_until(lambda: seen[web], 30, what="web registered")

        ctl("stop", "web")
        wait_until(lambda: not seen[web], 10, what="web deregistered")
        ctl("start", "web")
        wait_until(lambda: seen[web], 15, what="web registered again")

        say(f"$ touch {WORKDIR}/flag   (the [flag] section's check starts passing)")
        (WORKDIR / "flag").touch()
        wait_until(lambda: seen[flag], 15, what="flag registered")
        say(f"$ rm {WORKDIR}/flag")
        (WORKDIR / "flag").unlink()
        wait_until(lambda: not seen[flag], 15, what="flag deregistered")

        ctl("stop", "zkwatcher")
        wait_until(lambda: not seen[web], 5, what="listener stopped")
        say("listener stopped: every node it owned is gone")
        return 0
    except TimeoutError as exc:
        say(f"demo failed: {exc}; logs are in {WORKDIR}")
        return 1
    finally:
        if supervisord is not None:
            supervisord.terminate()
            supervisord.wait(30)
        zk.stop()
        zk.close()
        zookeeper.stop()
        say("stopped supervisord and ZooKeeper")


if __name__ == "__main__":
    sys.exit(main())
