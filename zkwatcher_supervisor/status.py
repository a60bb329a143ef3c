"""The listener's state, published as a JSON file, and the ``status`` command that reads it.

The listener never writes anything but protocol text to stdout, so it tells
operators how it is doing through a small JSON file (``[zkwatcher]
status_file``), rewritten atomically by its own thread at most twice a second
and at least every ``HEARTBEAT`` seconds.  ``zkwatcher-supervisor status``
joins that with what ZooKeeper itself holds, one line per section, and exits 0
only when every section is registered exactly when it is healthy.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from typing import Callable

from .config import Config
from .selectwake import proc_stat

log = logging.getLogger(__name__)

MIN_INTERVAL = 0.5
HEARTBEAT = 10.0

Snapshot = Callable[[], dict]


class StatusFileWriter:
    """Writes ``snapshot()`` to ``path`` when told something changed; never blocks the caller."""

    def __init__(self, path: str, snapshot: Snapshot) -> None:
        self.path = path
        self._snapshot = snapshot
        self._changed = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="status", daemon=True)

    def start(self) -> None:
        self._changed.set()
        self._thread.start()

    def changed(self) -> None:
        self._changed.set()

    def stop(self) -> None:
        self._stopping = True
        self._changed.set()
        self._thread.join(1.0)
        try:
            os.unlink(self.path)  # a stopped listener has no state to show
        except OSError:
            pass

    def _run(self) -> None:
        while not self._stopping:
            self._changed.wait(HEARTBEAT)
            if self._stopping:
                return
            self._changed.clear()
            try:
                self._write(self._snapshot())
            except Exception:
                log.exception("writing the status file %s failed", self.path)
            time.sleep(MIN_INTERVAL)  # coalesce bursts of changes

    def _write(self, state: dict) -> None:
        directory = os.path.dirname(self.path) or "."
        fd, temporary = tempfile.mkstemp(prefix=".zkwatcher-status-", dir=directory)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(state, out, indent=1, sort_keys=True)
            os.chmod(temporary, 0o644)
            os.replace(temporary, self.path)  # readers see the old file or the new one
        except BaseException:
            os.unlink(temporary)
            raise


def read_status_file(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs; a killed listener not yet reaped (a zombie) does not."""
    fields = proc_stat(pid)
    return bool(fields) and fields[0] not in (b"Z", b"X")


def _describe_check(check: dict | None, now: float) -> str:
    if not check:
        return ""
    if check.get("last_result") is None:
        result = "not run yet"
    else:
        result = "pass" if check["last_result"] else "FAIL"
        result += f" {now - check['last_run']:.0f}s ago"
        if not check["last_result"] and check.get("detail"):
            result += f" ({check['detail']})"
    # Counts of consecutive runs beside the thresholds they are measured against;
    # "rise 3/1" read like a fraction.
    return (f"check {result}, passes {check['passes']} (rise {check['rise']}), "
            f"failures {check['failures']} (fall {check['fall']})")


def status_report(config: Config, read_nodes: Callable[[list[str]], dict[str, bool]],
                  now: float | None = None) -> tuple[list[str], bool]:
    """Lines to print and whether everything is as it should be.

    ``read_nodes`` maps each znode path to whether it exists in ZooKeeper.
    """
    now = time.time() if now is None else now
    state = read_status_file(config.status_file)
    running = state is not None and _alive(state.get("pid", 0))
    lines = []
    if state is None:
        lines.append(f"listener: no status file at {config.status_file} (not running?)")
    elif not running:
        lines.append(f"listener: pid {state.get('pid')} is gone; status from "
                     f"{now - state.get('updated', now):.0f}s ago")
    else:
        zookeeper = state.get("zookeeper", {})
        lines.append(f"listener: pid {state['pid']}, ZooKeeper "
                     f"{'connected' if zookeeper.get('connected') else 'DISCONNECTED'}, "
                     f"updated {now - state.get('updated', now):.0f}s ago")
    present = read_nodes([service.node_path for service in config.services])
    all_ok = running
    sections = (state or {}).get("sections", {})
    for service in config.services:
        info = sections.get(service.name) if running else None
        registered = present.get(service.node_path, False)
        if info is None:
            ok = False
            health = "unknown"
        else:
            ok = registered == info["healthy"]
            health = "healthy" if info["healthy"] else "unhealthy"
        all_ok = all_ok and ok
        details = []
        if info is not None:
            if info.get("processes"):
                details.append(" ".join(f"{name}={state_}"
                                        for name, state_ in sorted(info["processes"].items())))
            details.append(_describe_check(info.get("check"), now))
        lines.append(
            f"{'ok  ' if ok else 'BAD '} [{service.name}] {service.node_path} "
            f"{'registered' if registered else 'not registered'}, {health}"
            + "".join(f"; {d}" for d in details if d)
        )
    return lines, all_ok
