"""The listener's state, published as a JSON file, and the ``status`` command that reads it.

The listener never writes anything but protocol text to stdout, so it tells
operators how it is doing through a small JSON file (``[zkwatcher]
status_file``), rewritten atomically at most twice a second when something
changed and at least every ``HEARTBEAT`` seconds.  The event loop builds the
snapshot; the file is written off the loop.  ``zkwatcher-supervisor status``
joins the file with what ZooKeeper itself holds, one line per section, and
exits 0 only when every section is registered exactly when it is healthy and
no check is overdue.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from typing import Callable

from .config import Config
from .loop import EventLoop, Timer, offload
from .procfs import proc_stat

log = logging.getLogger(__name__)

MIN_INTERVAL = 0.5
HEARTBEAT = 10.0
# A status file older than this is from a listener that stopped updating it.
STALE_AFTER = 3 * HEARTBEAT

Snapshot = Callable[[], dict]


class StatusPublisher:
    """Publishes ``snapshot()`` (built on the loop) to ``path`` (written off the loop).

    :attr:`latest` is the last snapshot built: an immutable-by-convention dict
    that other threads (the metrics server) may read.
    """

    def __init__(self, loop: EventLoop, path: str, snapshot: Snapshot) -> None:
        self.path = path
        self.latest: dict = {}
        self._loop = loop
        self._snapshot = snapshot
        self._timer: Timer | None = None  # a change to publish
        self._heartbeat: Timer | None = None
        self._last_built = float("-inf")
        self._writing = False
        self._stopped = False

    def start(self) -> None:
        self.changed()

    def changed(self) -> None:
        """Something worth showing changed: publish within MIN_INTERVAL."""
        if self._timer is None and not self._stopped:
            when = max(self._loop.clock(), self._last_built + MIN_INTERVAL)
            self._timer = self._loop.call_at(when, self._publish)

    def _publish(self) -> None:
        self._timer = None
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._stopped:
            return
        self._last_built = self._loop.clock()
        self.latest = self._snapshot()
        # The heartbeat: the file stays fresh even when nothing changes.
        self._heartbeat = self._loop.call_later(HEARTBEAT, self._publish)
        if self._writing:
            self.changed()  # write again once the write in flight is done
            return
        self._writing = True
        state = self.latest
        offload(self._loop, lambda: self._write(state), self._written, name="status")

    def _written(self, _result, error: BaseException | None) -> None:
        self._writing = False
        if error is not None:
            log.error("writing the status file %s failed: %s", self.path, error)

    def stop(self) -> None:
        self._stopped = True
        for timer in (self._timer, self._heartbeat):
            if timer is not None:
                timer.cancel()
        try:
            os.unlink(self.path)  # a stopped listener has no state to show
        except OSError:
            pass

    def _write(self, state: dict) -> None:
        if self._stopped:
            return
        directory = os.path.dirname(self.path) or "."
        fd, temporary = tempfile.mkstemp(prefix=".zkwatcher-status-", dir=directory)
        try:
            with os.fdopen(fd, "w") as out:
                out.writelines(_json_pieces(state))
            os.chmod(temporary, 0o644)
            if self._stopped:
                raise OSError("the listener is stopping")  # its file is gone for good
            os.replace(temporary, self.path)  # readers see the old file or the new one
        except BaseException:
            os.unlink(temporary)
            raise


_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def _json_pieces(state: dict) -> Iterator[str]:
    """``state`` as JSON, a piece per entry of each top-level mapping (a section each).

    ``json.dump`` would use the pure-Python encoder and ``json.dumps`` build the
    whole file as one string (megabytes the allocator keeps, at thousands of
    sections); this has the C encoder's speed and small pieces.
    """
    yield "{"
    for index, key in enumerate(sorted(state)):
        yield ("," if index else "") + _encode(key) + ":"
        value = state[key]
        if isinstance(value, dict):
            yield "{"
            for number, name in enumerate(sorted(value)):
                yield ("," if number else "") + _encode(name) + ":" + _encode(value[name])
            yield "}"
        else:
            yield _encode(value)
    yield "}"


def read_status_file(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def process_alive(pid: int) -> bool:
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


def _describe_drain(drained: dict | None, now: float) -> str:
    if not drained:
        return ""
    text = f"drained by {drained['by']} {now - drained['since']:.0f}s ago"
    if drained.get("reason"):
        text += f" ({drained['reason']})"
    if drained.get("until"):
        text += f", until {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(drained['until']))}"
    return text


def _overdue(info: dict | None, now: float) -> str:
    """Why the section's check is overdue, or "" (a stuck check runner shows here)."""
    due_by = ((info or {}).get("check") or {}).get("due_by")
    if due_by is None or now <= due_by:
        return ""
    return f"check OVERDUE: no result for {now - due_by:.0f}s past its deadline"


def status_report(config: Config, read_nodes: Callable[[list[str]], dict[str, bool]],
                  now: float | None = None) -> tuple[list[str], bool]:
    """Lines to print and whether everything is as it should be.

    ``read_nodes`` maps each znode path to whether it exists in ZooKeeper.
    """
    now = time.time() if now is None else now
    state = read_status_file(config.status_file)
    running = state is not None and process_alive(state.get("pid", 0))
    lines = []
    if state is None:
        lines.append(f"listener: no status file at {config.status_file} (not running?)")
    elif not running:
        lines.append(f"listener: pid {state.get('pid')} is gone; status from "
                     f"{now - state.get('updated', now):.0f}s ago")
    else:
        zookeeper = state.get("zookeeper", {})
        age = now - state.get("updated", now)
        lines.append(f"listener: pid {state['pid']}, ZooKeeper "
                     f"{'connected' if zookeeper.get('connected') else 'DISCONNECTED'}, "
                     f"updated {age:.0f}s ago"
                     + (" — NOT UPDATING (stuck?)" if age > STALE_AFTER else ""))
        if age > STALE_AFTER:
            running = False  # what it says can no longer be trusted
    sections = (state or {}).get("sections", {})

    def node(service) -> str:
        # A ServerSet member's name is ZooKeeper's choice: the listener reports it.
        info = sections.get(service.name) if running else None
        return info["path"] if info and "<" not in info.get("path", "<") else \
            service.display_path

    present = read_nodes([node(service) for service in config.services
                          if "<" not in node(service)])
    all_ok = running
    for service in config.services:
        info = sections.get(service.name) if running else None
        registered = present.get(node(service), False)
        if info is None:
            ok = False
            health = "unknown"
        elif info.get("drained"):
            ok = not registered  # out of discovery on purpose, whatever its health
            health = ("healthy" if info["healthy"] else "unhealthy") + ", DRAINED"
        else:
            ok = registered == info["healthy"]
            health = "healthy" if info["healthy"] else "unhealthy"
        overdue = _overdue(info, now)
        if overdue:
            ok = False
        all_ok = all_ok and ok
        details = [overdue, _describe_drain((info or {}).get("drained"), now)]
        if info is not None:
            if info.get("processes"):
                details.append(" ".join(f"{name}={state_}"
                                        for name, state_ in sorted(info["processes"].items())))
            details.append(_describe_check(info.get("check"), now))
        lines.append(
            f"{'ok  ' if ok else 'BAD '} [{service.name}] {node(service)} "
            f"{'registered' if registered else 'not registered'}, {health}"
            + "".join(f"; {d}" for d in details if d)
        )
    return lines, all_ok
