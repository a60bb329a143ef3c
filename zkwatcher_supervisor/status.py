"""The listener's state, published as a JSON file, and the ``status`` command that reads it.

The listener never writes anything but protocol text to stdout, so it tells
operators how it is doing through a small JSON file (``[zkwatcher]
status_file``), rewritten atomically at most twice a second when something
changed and at least every ``HEARTBEAT`` seconds.  The event loop builds the
snapshot; the file is written off the loop.  The file names the ensemble the
listener uses (hosts, chroot, TLS or not; no credential), so
``zkwatcher-supervisor status`` asks ZooKeeper there and joins what it holds
with the file: one line per section (or one JSON document), exit 0 only when
every section is registered exactly when it is healthy and no check is overdue.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator

from . import statedir
from .config import Config, ZooKeeperSettings, check_hosts, settings_for_reading
from .loop import EventLoop, SingleFlight, Timer, offload
from .procfs import listener_uids, parent_pid, proc_stat, process_cmdline, process_uid
from .untrusted import Unusable, load_json, number, printable

log = logging.getLogger(__name__)

MIN_INTERVAL = 0.5
HEARTBEAT = 10.0
# A status file older than this is from a listener that stopped updating it.
STALE_AFTER = 3 * HEARTBEAT
MAX_STATUS_BYTES = 64 << 20  # a status file of 100,000 sections
MAX_HOSTS_CHARS = 10000

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
        self._writing = SingleFlight(self._write_latest)
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
        if self._writing.busy:
            # Not an ask for a rerun: the snapshot is rebuilt, no more often than
            # MIN_INTERVAL, before it is written again.
            self.changed()
            return
        self._writing.request()

    def _write_latest(self) -> None:
        state = self.latest
        offload(self._loop, lambda: self._write(state), self._written, name="status")

    def _written(self, _result, error: BaseException | None) -> None:
        self._writing.done()
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

        def pieces() -> Iterator[str]:
            yield from _json_pieces(state)
            if self._stopped:
                raise OSError("the listener is stopping")  # its file is gone for good

        # Not durable: the file is rewritten within HEARTBEAT seconds and removed
        # at stop, so syncing it to disk twice a second would buy nothing.
        statedir.write_atomically(self.path, pieces(), 0o644, durable=False)


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


def _check_state(state) -> dict:
    """The status file's content if it has the shape the listener writes; Unusable if not.

    The file may be stale, truncated or (where an operator pointed
    ``status_file`` somewhere others can write) forged: what ``status`` reads
    from it is checked before use, never trusted into a traceback.
    """
    def mapping(value, what: str) -> dict:
        if not isinstance(value, dict):
            raise Unusable(f"{what} is not a mapping")
        return value

    def optional_number(value, what: str):
        return None if value is None else number(value, what, -1e12, 1e12)

    state = mapping(state, "the file")
    pid = state.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid < 2**22:
        raise Unusable("pid is not a process id")
    number(state.get("updated"), "updated", 0, 1e11)
    zookeeper = mapping(state.get("zookeeper", {}), "zookeeper")
    hosts = zookeeper.get("hosts", "")
    if not isinstance(hosts, str):
        raise Unusable("zookeeper hosts is not a string")
    if hosts:
        # ``status`` connects where this says: only to what a listener could use.
        if len(hosts) > MAX_HOSTS_CHARS or not hosts.isprintable():
            raise Unusable("zookeeper hosts is not a list of servers")
        try:
            check_hosts(hosts)
        except ValueError as exc:
            raise Unusable(f"zookeeper hosts: {exc}") from None
    if not isinstance(zookeeper.get("tls", False), bool):
        raise Unusable("zookeeper tls is not true or false")
    if not isinstance(zookeeper.get("problem") or "", str):
        raise Unusable("zookeeper problem is not a string")
    for name, info in mapping(state.get("sections", {}), "sections").items():
        info = mapping(info, f"section {name!r}")
        if not isinstance(info.get("path"), str) or not isinstance(info.get("healthy"), bool) \
                or not isinstance(info.get("registered", False), bool):
            raise Unusable(f"section {name!r} lacks path/healthy/registered")
        processes = mapping(info.get("processes", {}), f"processes of {name!r}")
        if not all(isinstance(value, str) for value in processes.values()):
            raise Unusable(f"processes of {name!r} are not states")
        check = info.get("check")
        if check is not None:
            mapping(check, f"check of {name!r}")
            for key in ("due_by", "duration"):
                optional_number(check.get(key), key)
            for key in ("passes", "failures", "rise", "fall"):
                number(check.get(key), key, 0, 1e12)
            if check.get("last_result") is not None:
                if not isinstance(check["last_result"], bool):
                    raise Unusable(f"last_result of {name!r} is not true or false")
                number(check.get("last_run"), "last_run", 0, 1e11)
            if not isinstance(check.get("detail") or "", str):
                raise Unusable(f"detail of {name!r} is not text")
        drained = info.get("drained")
        if drained is not None:
            mapping(drained, f"drain of {name!r}")
            number(drained.get("since"), "since", 0, 1e11)
            if drained.get("until") is not None:
                number(drained.get("until"), "until", 0, 1e11)
            if not isinstance(drained.get("by"), str) \
                    or not isinstance(drained.get("reason", ""), str):
                raise Unusable(f"drain of {name!r} lacks who and why")
    # What drain and handoff read of the listener's answers, so a forged or
    # truncated one can neither crash them nor make them report success.
    def texts(value, what: str) -> None:
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise Unusable(f"{what} is not a list of names")

    for request_id, answer in mapping(state.get("requests", {}), "requests").items():
        what = f"the answer to request {request_id!r}"
        mapping(answer, what)
        if not isinstance(answer.get("error", ""), str):
            raise Unusable(f"{what}: error is not text")
        for key in ("applied", "sections"):
            if key in answer:
                texts(answer[key], f"{what}: {key}")
        refused = mapping(answer.get("refused") or {}, f"{what}: refused")
        if not all(isinstance(why, str) for why in refused.values()):
            raise Unusable(f"{what}: refused gives no reason")
        for key in ("refused_more", "accepted"):
            optional_number(answer.get(key), f"{what}: {key}")
    handoff_refused = state.get("handoff_refused")
    if handoff_refused is not None and not isinstance(
            mapping(handoff_refused, "handoff_refused").get("why"), str):
        raise Unusable("handoff_refused gives no reason")
    return state


def of_an_earlier_version(state: dict | None) -> bool:
    """Whether a status file was written by a listener of an earlier version: it
    does not publish its ZooKeeper session (this version does, None included)."""
    return "session" not in ((state or {}).get("zookeeper") or {})


def read_status_file(path: str, owner: int | None = None,
                     follow: bool = True) -> dict | None:
    """The listener's status file, or None if it is missing or not one we can use.

    ``owner``: the uid the file and its directory must belong to, writable by
    nobody else; ``follow``: whether a symlink is followed (only for a path an
    operator configured).
    """
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return None
            if owner is not None and not (statedir.trusted(info, owner) and statedir.trusted(
                    os.stat(os.path.dirname(path) or "."), owner)):
                return None
            return _check_state(load_json(handle.read(MAX_STATUS_BYTES + 1),
                                          MAX_STATUS_BYTES))
        except (OSError, Unusable):
            return None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs; a killed listener not yet reaped (a zombie) does not."""
    fields = proc_stat(pid)
    if fields:
        return fields[0] not in (b"Z", b"X")
    try:  # /proc with hidepid hides other users' (and non-dumpable) processes
        os.kill(pid, 0)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def owner_of(path: str) -> int | None:
    try:
        return os.stat(path).st_uid
    except OSError:
        return None


def _runs_the_listener(uid: int, pid: int) -> bool:
    """Whether ``pid`` is a listener run as ``uid`` that only root could have started:
    root itself, or a child of root's supervisord (its ``user =``).  Anyone can
    start a process called zkwatcher-supervisor; nobody but root can make
    supervisord its parent."""
    if uid == 0:
        return True
    if process_uid(pid) != uid:
        return False
    parent = parent_pid(pid)
    return parent is not None and process_uid(parent) == 0 \
        and b"supervisord" in process_cmdline(parent)


def distrust(path: str) -> str:
    """Why the status file at ``path`` was not used: "" if there is none, else a reason."""
    try:
        info = os.lstat(path)
        directory = os.stat(os.path.dirname(path) or ".")
    except OSError:
        return ""
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file"
    if not (statedir.trusted(info, info.st_uid) and statedir.trusted(directory, info.st_uid)):
        return f"{path} or its directory may be written by others; not trusted"
    return f"{path} names no listener that is running"


def locate_status(config_filename: str, explicit: str = "") -> tuple[str, dict | None]:
    """Where the listener for ``config_filename`` publishes its state, and the state.

    Whoever asks gets the same answer: the listener may run as root (its file
    is under /run) or as another user (its home), and we may be yet another
    user, so every place a listener could use is looked at — root's, those of
    the users running a listener now, ours, and where earlier versions kept
    it.  A file counts only if it is its owner's alone and its owner runs, as
    a listener only root could have started, the process it names.
    """
    if explicit:
        return explicit, read_status_file(explicit)
    candidates = [(statedir.state_path(config_filename, "status", uid), uid)
                  for uid in dict.fromkeys([0, *sorted(listener_uids()), os.geteuid()])]
    candidates += [(path, None) for path in statedir.legacy_paths(config_filename, "status")]
    first = candidates[0][0]
    stale: tuple[str, dict] | None = None
    for path, uid in dict.fromkeys(candidates):
        owner = uid if uid is not None else owner_of(path)
        if owner is None:
            continue
        state = read_status_file(path, owner=owner, follow=False)
        if state is None:
            continue
        if process_alive(state["pid"]) and _runs_the_listener(owner, state["pid"]):
            return path, state
        if owner == 0 and stale is None:
            stale = (path, state)  # root's word that its listener is gone
    return stale if stale is not None else (first, None)


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


def _registration(registered: bool, unknown: bool) -> str:
    if unknown:
        return "registration unknown"
    return "registered" if registered else "not registered"


def _overdue_text(overdue: float | None) -> str:
    """Why the section's check is overdue, or "" (a stuck check runner shows here)."""
    if overdue is None:
        return ""
    return f"check OVERDUE: no result for {overdue:.0f}s past its deadline"


def published_ensemble(state: dict | None) -> tuple[str, bool] | None:
    """The ZooKeeper hosts (with its chroot, if any) the listener said it uses,
    and whether over TLS; None if its status file says nothing about it."""
    zookeeper = (state or {}).get("zookeeper") or {}
    hosts = zookeeper.get("hosts")
    return (hosts, bool(zookeeper.get("tls"))) if hosts else None


def reading_settings(config: Config, state: dict | None,
                     hosts_override: str | None = None) -> ZooKeeperSettings:
    """What a reading command asks ZooKeeper with: the ensemble given by ``-s``
    (already in ``config``), else the one the listener published, else the
    config's — with the config's TLS files, read as whoever runs us (see
    :func:`settings_for_reading`).  ValueError says why it cannot."""
    zookeeper = config.zookeeper
    published = None if hosts_override else published_ensemble(state)
    if published is not None:
        hosts, tls = published
        if tls and zookeeper.tls is None:
            raise ValueError(f"the listener speaks TLS to {hosts}, and {config.filename} "
                             "has no TLS settings (changed since it started?)")
        zookeeper = dataclasses.replace(zookeeper, hosts=hosts,
                                        tls=zookeeper.tls if tls else None)
    return settings_for_reading(zookeeper)


def _drain_facts(drained: dict | None) -> dict | None:
    if not drained:
        return None
    return {"by": drained["by"], "reason": drained.get("reason", ""),
            "since": drained["since"], "until": drained.get("until")}


def status_document(config: Config | None,
                    read_nodes: Callable[[list[str]], dict[str, bool] | None],
                    now: float | None = None,
                    located: tuple[str, dict | None] | None = None) -> dict:
    """The listener and every section as data: what ``status --json`` prints and
    what :func:`status_report` words.

    ``read_nodes`` maps each znode path to whether it exists in ZooKeeper (None:
    ZooKeeper could not be asked, so nothing is known to be right).
    ``located``: the status file's path and content (default: :func:`locate_status`).
    Without ``config`` (one we may not read) the sections are the status file's.
    """
    now = time.time() if now is None else now
    if located is None:
        located = locate_status(config.filename, config.status_file)
    path, state = located
    alive = state is not None and process_alive(state["pid"])
    listener: dict = {"status_file": path, "pid": None, "alive": False, "running": False,
                      "updated": None, "age": None, "stale": False, "problem": None,
                      "zookeeper": None}
    if state is None:
        listener["problem"] = distrust(path) or f"no status file at {path} (not running?)"
    else:
        zookeeper = state.get("zookeeper", {})
        age = now - state["updated"]
        listener.update(pid=state["pid"], alive=alive, updated=state["updated"], age=age,
                        stale=alive and age > STALE_AFTER, zookeeper={
                            "hosts": zookeeper.get("hosts") or None,
                            "tls": bool(zookeeper.get("tls")),
                            "connected": bool(zookeeper.get("connected")),
                            "problem": zookeeper.get("problem") or None})
    # What a listener that is gone or stuck says can no longer be trusted.
    running = alive and not listener["stale"]
    listener["running"] = running
    sections = (state or {}).get("sections", {})
    if config is not None:
        listed = [(service.name, service.display_path) for service in config.services]
    else:
        listed = [(name, info["path"]) for name, info in sorted(sections.items())]

    def node(name: str, display_path: str) -> str:
        # A ServerSet member's name is ZooKeeper's choice: the listener reports it.
        info = sections.get(name) if running else None
        return info["path"] if info and "<" not in info["path"] else display_path

    present = read_nodes([node(*entry) for entry in listed if "<" not in node(*entry)])
    unknown = present is None  # ZooKeeper could not be asked: nothing is known to be right
    all_ok = running and not unknown
    present = present or {}
    entries: dict[str, dict] = {}
    for name, display_path in listed:
        info = sections.get(name) if running else None
        registered = present.get(node(name, display_path), False)
        drained = (info or {}).get("drained")
        if info is None:
            ok = False
        elif drained:
            ok = not registered  # out of discovery on purpose, whatever its health
        else:
            ok = registered == info["healthy"]
        due_by = ((info or {}).get("check") or {}).get("due_by")
        overdue = now - due_by if due_by is not None and now > due_by else None
        if overdue is not None or unknown:
            ok = False
        all_ok = all_ok and ok
        entries[name] = {
            "node": node(name, display_path), "ok": ok,
            "registered": None if unknown else registered,
            "healthy": None if info is None else info["healthy"],
            "drained": _drain_facts(drained),
            "processes": dict(sorted((info or {}).get("processes", {}).items())),
            "check": None if info is None else info.get("check"),
            "overdue": overdue,
        }
    return {"ok": all_ok, "listener": listener, "sections": entries}


def status_report(config: Config | None,
                  read_nodes: Callable[[list[str]], dict[str, bool] | None],
                  now: float | None = None,
                  located: tuple[str, dict | None] | None = None) -> tuple[list[str], bool]:
    """Lines to print and whether everything is as it should be (see
    :func:`status_document` for the arguments)."""
    now = time.time() if now is None else now
    document = status_document(config, read_nodes, now, located)
    return report_lines(document, now), document["ok"]


def report_lines(document: dict, now: float) -> list[str]:
    """:func:`status_document` in words, a line for the listener and one per section."""
    listener = document["listener"]
    lines = []
    if listener["pid"] is None:
        lines.append(f"listener: {listener['problem']}")
    elif not listener["alive"]:
        lines.append(f"listener: pid {listener['pid']} is gone; status from "
                     f"{listener['age']:.0f}s ago")
    else:
        zookeeper = listener["zookeeper"]
        link = "connected" if zookeeper["connected"] else "DISCONNECTED"
        if not zookeeper["connected"] and zookeeper["problem"]:
            link += f" ({zookeeper['problem']})"
        lines.append(printable(f"listener: pid {listener['pid']}, ZooKeeper {link}, "
                               f"updated {listener['age']:.0f}s ago"
                               + (" — NOT UPDATING (stuck?)" if listener["stale"] else "")))
    for name, entry in document["sections"].items():
        if entry["healthy"] is None:
            health = "unknown"
        else:
            health = "healthy" if entry["healthy"] else "unhealthy"
            if entry["drained"]:
                health += ", DRAINED"
        details = [_overdue_text(entry["overdue"]), _describe_drain(entry["drained"], now)]
        if entry["healthy"] is not None:
            if entry["processes"]:
                details.append(" ".join(f"{process}={state_}" for process, state_
                                        in entry["processes"].items()))
            details.append(_describe_check(entry["check"], now))
        lines.append(printable(
            f"{'ok  ' if entry['ok'] else 'BAD '} [{name}] {entry['node']} "
            f"{_registration(bool(entry['registered']), entry['registered'] is None)}, "
            f"{health}" + "".join(f"; {d}" for d in details if d)
        ))
    return lines
