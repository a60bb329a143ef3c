"""Drain: take sections out of discovery without stopping them.

The request travels through supervisord itself: ``drain``/``undrain`` call
``supervisor.sendRemoteCommEvent`` over supervisord's XML-RPC (so they work
wherever supervisorctl works, with supervisord's own access control), and
every listener subscribed to ``REMOTE_COMMUNICATION`` receives it.  A request
names the config it is meant for (its absolute path as given), so only that
listener acts.  The listener acknowledges in its status file what it applied
and what it refused, then that ZooKeeper confirmed the deletions.

Anyone who may call supervisord's XML-RPC can send such an event, so a
request is parsed as hostile input (:func:`parse_event`): bounded, typed,
printable — or refused with the reason.

Drained sections are kept in a state file in the listener's private state
directory, so they stay drained across a crash, a restart of the listener or
of supervisord, a reload, and (as root) a reboot.  The file also names every
section the listener runs and its node, so that ``start_drained`` can tell a
section never let into rotation from one that was.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from dataclasses import asdict, dataclass

from . import statedir
from .config import MAX_NODE_PATH_CHARS, MAX_SECTION_NAME_CHARS
from .untrusted import Unusable, excerpt, load_json, number, printable, text_field

log = logging.getLogger(__name__)

EVENT_TYPE = "zkwatcher-supervisor"
ACK_TIMEOUT = 2.0
CONFIRM_TIMEOUT = 5.0
# drain --stop: how long a program someone else is stopping may take to stop.
STOPPING_WAIT = 60.0
# ... and how long one seen running, starting or stopping meanwhile must stay
# stopped: supervisord restarts an EXITED program with autorestart within a pass
# of its loop (about a second), and a restart under way starts it right after.
EXITED_SETTLE = 1.5
ACTIONS = ("drain", "undrain")
# Bounds on a request from outside: far above any real one.
MAX_REQUEST_BYTES = 64 * 1024
MAX_SECTIONS = 10000
MAX_NAME_CHARS = MAX_SECTION_NAME_CHARS  # config refuses longer section names
MAX_REASON_CHARS = 500
MAX_BY_CHARS = 100
MAX_ID_CHARS = 64
MAX_PATH_CHARS = MAX_NODE_PATH_CHARS  # and longer node paths
MAX_DRAIN_SECONDS = 3650 * 86400.0  # ten years: longer is a typo, not a plan
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Drain:
    """Why and until when a section is out of discovery."""

    reason: str
    by: str
    since: float  # wall clock
    until: float | None = None  # wall clock; None: until undrain


@dataclass(frozen=True)
class DrainRequest:
    """A drain/undrain request that passed every check of :func:`parse_event`."""

    config: str
    id: str
    action: str
    sections: tuple[str, ...]
    reason: str = ""
    by: str = "?"
    duration: float | None = None  # seconds from when the listener applies it


class UnusableRequest(Unusable):
    """A request we cannot apply; ``id`` and ``config`` are set when they were readable,
    so the listener can still tell the sender why."""

    def __init__(self, message: str, request_id: str | None = None,
                 config: str | None = None) -> None:
        super().__init__(message)
        self.id = request_id
        self.config = config


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` -> seconds (at most ten years)."""
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h)")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds > MAX_DRAIN_SECONDS:
        raise ValueError(f"{text!r} is longer than {MAX_DRAIN_SECONDS / 86400:.0f}d")
    return seconds


def state_path(config_filename: str) -> str:
    return statedir.state_path(config_filename, "drained")


@dataclass(frozen=True)
class SavedDrains:
    """What the drain file holds."""

    drains: dict[str, Drain]
    # Every section the listener ran, by name, with its node's registration key;
    # None for a file of an earlier version, which did not record them.
    sections: dict[str, str] | None
    # A file was there but could not be believed (its mode, owner, contents).
    refused: bool = False


# The entry that lists the sections: under a name no section can have (configparser
# needs one character at least), and shaped as a drain, so that an earlier version
# reads it as the drain of a section it does not have, drops it and keeps the rest.
SECTIONS_ENTRY = ""
_SECTIONS_ENTRY_DRAIN = {"reason": "", "by": "", "since": 0, "until": None}


def _parse_saved(saved) -> SavedDrains:
    if not isinstance(saved, dict):
        raise Unusable("not a mapping")
    drains, sections = {}, None
    for name, entry in saved.items():
        if not isinstance(entry, dict):
            raise Unusable(f"[{name}] is not a mapping")
        if name == SECTIONS_ENTRY:
            sections = _parse_sections(entry.get("sections"))
            continue
        until = entry.get("until")
        drains[text_field(name, "section", MAX_NAME_CHARS)] = Drain(
            _saved_text(entry.get("reason", ""), MAX_REASON_CHARS),
            _saved_text(entry.get("by", "?"), MAX_BY_CHARS),
            number(entry.get("since"), "since", 0, 1e11),
            None if until is None else number(until, "until", 0, 1e11))
    return SavedDrains(drains, sections)


def _parse_sections(saved) -> dict[str, str]:
    if not isinstance(saved, dict):
        raise Unusable("the sections are not a mapping")
    return {text_field(name, "section", MAX_NAME_CHARS):
            text_field(node, f"the node of [{name}]", MAX_PATH_CHARS)
            for name, node in saved.items()}


def _saved_text(value, limit: int) -> str:
    """A reason or name as saved: shortened rather than refused (earlier versions had
    no limits), never a reason to lose every drain in the file."""
    return printable(value if isinstance(value, str) else str(value))[:limit]


def nothing_saved(refused: bool = False) -> SavedDrains:
    """No drain, and no section run before."""
    return SavedDrains({}, {}, refused)


def load(path: str) -> SavedDrains:
    """What is saved at ``path``; a missing file, or one we cannot trust, is nothing
    saved (``refused`` says which)."""
    saved = statedir.read_private_json(path, "drain state", _parse_saved)
    return saved if saved is not None else nothing_saved(refused=os.path.lexists(path))


def load_adopting(path: str, legacy: list[str]) -> tuple[SavedDrains, str | None]:
    """What is saved at ``path`` or, when there is no file there yet, the first file
    an earlier version left at one of ``legacy``; and which legacy file that was."""
    if os.path.lexists(path):
        return load(path), None
    for old in legacy:
        saved = statedir.read_private_json(old, "drain state", _parse_saved)
        if saved is not None:
            log.info("taking over %d drained section(s) saved by an earlier version at %s",
                     len(saved.drains), old)
            return saved, old
    return nothing_saved(), None


def save(path: str, drains: dict[str, Drain], sections: dict[str, str]) -> None:
    """Save the drains and every section's node (``sections``: name -> node key)."""
    if not statedir.safe_directory(os.path.dirname(path)):
        raise OSError(f"{os.path.dirname(path)} is not a private directory")
    saved = {name: asdict(drain) for name, drain in sorted(drains.items())}
    saved[SECTIONS_ENTRY] = {**_SECTIONS_ENTRY_DRAIN, "sections": dict(sorted(sections.items()))}
    text = json.dumps(saved)
    if len(text.encode()) > statedir.MAX_STATE_BYTES:
        # Written, it would be refused when read back: every drain lost at once.
        raise OSError(f"{len(saved) - 1} drains and {len(sections)} sections do not fit "
                      f"the {statedir.MAX_STATE_BYTES // 2**20} MiB a drain file may hold")
    statedir.write_atomically(path, text, 0o644)


def request(config_filename: str, action: str, sections: list[str], reason: str = "",
            duration: float | None = None, by: str = "") -> dict:
    """The request for the listener of ``config_filename``.  It carries ``duration``
    (what this version applies) and the ``until`` it implies, which is all a
    listener of an earlier version reads — so a drain sent while upgrading ends
    when asked."""
    import uuid  # the commands only: on Python 3.9 it brings platform and subprocess

    return {"config": statedir.config_key(config_filename), "id": uuid.uuid4().hex,
            "action": action, "sections": sections, "reason": reason, "duration": duration,
            "until": None if duration is None else time.time() + duration,
            "by": by or _user_name()}


def _user_name() -> str:
    import getpass  # only here: the listener never sends requests

    return getpass.getuser()


def parse_event(payload: str) -> DrainRequest | None:
    """The request in a REMOTE_COMMUNICATION payload (``type:T\\nDATA``); None if the
    event is not of our type; UnusableRequest, saying why, if it is ours but bad."""
    header, _, data = payload.partition("\n")
    if header.strip() != f"type:{EVENT_TYPE}":
        return None
    parsed = load_json(data, MAX_REQUEST_BYTES)
    if not isinstance(parsed, dict):
        raise UnusableRequest(f"a JSON {type(parsed).__name__}, not an object")
    request_id = parsed.get("id")
    config = parsed.get("config")
    if not (isinstance(request_id, str) and 0 < len(request_id) <= MAX_ID_CHARS
            and request_id.isascii() and request_id.isalnum()):
        request_id = None
    if not (isinstance(config, str) and 0 < len(config) <= MAX_PATH_CHARS):
        config = None

    def refuse(message: str) -> UnusableRequest:
        return UnusableRequest(message, request_id, config)

    if request_id is None:
        raise refuse("no usable id")
    if config is None:
        raise refuse("no usable config")
    action = parsed.get("action")
    if action not in ACTIONS:
        raise refuse(f"action must be drain or undrain, got {action!r:.40}")
    sections = parsed.get("sections")
    if not isinstance(sections, list) or not 0 < len(sections) <= MAX_SECTIONS:
        raise refuse("sections must be a list of section names")
    try:
        names = tuple(dict.fromkeys(text_field(name, "a section name", MAX_NAME_CHARS)
                                    for name in sections))
        duration = parsed.get("duration")
        if parsed.get("until") is not None and duration is None:
            raise Unusable("an absolute 'until' from an older client; this listener takes "
                           "a duration")
        if duration is not None:
            duration = number(duration, "duration", 0.001, MAX_DRAIN_SECONDS)
        reason = text_field(parsed.get("reason") or "", "reason", MAX_REASON_CHARS)
        by = text_field(parsed.get("by") or "?", "by", MAX_BY_CHARS)
    except Unusable as exc:
        raise refuse(str(exc)) from None
    return DrainRequest(config, request_id, action, names, reason, by, duration)


class DrainClient:
    """The ``drain``/``undrain`` commands: send, wait for the acknowledgement, maybe stop."""

    def __init__(self, config, rpc, status_file: str, owner: int | None = None) -> None:
        self.config = config
        self.rpc = rpc
        self.status_file = status_file
        self.owner = owner  # the uid the status file must belong to

    def select(self, names: list[str], program: str | None, everything: bool) -> list[str]:
        """Section names for the selection; ValueError naming what does not exist."""
        services = {service.name: service for service in self.config.services}
        if everything:
            return sorted(services)
        if program is not None:
            chosen = [service.name for service in services.values()
                      if service.program is not None and program in
                      (str(service.program), service.program.group)]
            if not chosen:
                raise ValueError(f"no section of {self.config.filename} is bound to program "
                                 f"{program!r}")
            return chosen
        unknown = [name for name in names if name not in services]
        if unknown:
            raise ValueError(f"{self.config.filename} has no section "
                             + ", ".join(f"[{name}]" for name in unknown))
        return names

    def _answers(self) -> dict:
        from .status import read_status_file

        answers = (read_status_file(self.status_file, self.owner) or {}).get("requests")
        return answers if isinstance(answers, dict) else {}

    def wait_for(self, request_id: str, field: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self._answers().get(request_id)
            if isinstance(answer, dict) and (answer.get(field) or answer.get("error")):
                return answer
            time.sleep(0.05)
        return None

    def send(self, message: dict) -> None:
        self.rpc.supervisor.sendRemoteCommEvent(EVENT_TYPE, json.dumps(message))

    def stop_programs(self, sections: list[str]) -> tuple[list[str], list[str]]:
        """Stop the programs bound to ``sections`` (once each).  Returns what is
        stopped now (stopped by us, or stopped already) and what supervisord
        could not stop, each as ``group:name`` and why."""
        import xmlrpc.client

        from supervisor.xmlrpc import Faults

        done: list[str] = []
        failed: list[str] = []
        asked = set()
        for name in sections:
            service = next(s for s in self.config.services if s.name == name)
            spec = service.program
            if spec is None:
                continue
            target = f"{spec.group}:*" if spec.name is None else f"{spec.group}:{spec.name}"
            if target in asked:
                continue
            asked.add(target)
            if spec.name is not None:
                try:
                    self.rpc.supervisor.stopProcess(target, True)
                except xmlrpc.client.Fault as exc:
                    if exc.faultCode != Faults.NOT_RUNNING:
                        raise
                    # Not running includes still stopping (someone else's stop).
                    target += " (stopped already)"
                done.append(target)
                continue
            # One result per process that was running; a failure is in its result.
            # In the order they stopped, which varies: name order reads the same
            # every time.
            results = stop_results(self.rpc.supervisor.stopProcessGroup(spec.group, True))
            for process, status, description in sorted(results, key=lambda result: result[0]):
                if status in (Faults.SUCCESS, Faults.NOT_RUNNING):
                    done.append(process)
                else:
                    failed.append(f"{process} ({description})")
            if not results:
                done.append(f"{target} (stopped already)")
        running = self._settle_stopped(asked, STOPPING_WAIT)
        failed += [f"{process} (still {state} after {STOPPING_WAIT:g}s)"
                   for process, state in running.items()]
        done = [entry for entry in done
                if not any(_covers(entry.split(" ", 1)[0], process) for process in running)]
        return done, failed

    def _settle_stopped(self, targets: set[str], timeout: float) -> dict[str, str]:
        """Wait until every process of ``targets`` (``group:name`` or ``group:*``) is
        stopped and stays so, stopping again any that someone (a restart) or
        supervisord (``autorestart`` after it exited) starts meanwhile; returns
        those not stopped after ``timeout``, with their state."""
        import xmlrpc.client

        from supervisor.xmlrpc import Faults

        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        # Seen not stopped during this wait: someone's restart may be under way,
        # and it starts the program a moment after STOPPED.
        stirred = False
        while True:
            states = {name: state for name, state in
                      process_states(self.rpc.supervisor.getAllProcessInfo()).items()
                      if any(_covers(target, name) for target in targets)}
            now = time.monotonic()
            running = {name: state for name, state in states.items()
                       if state in ("STARTING", "RUNNING", "BACKOFF", "STOPPING")}
            if running:
                quiet_since, stirred = now, True
            elif now - quiet_since >= EXITED_SETTLE or (not stirred and all(
                    state in ("STOPPED", "FATAL") for state in states.values())):
                return {}
            if now >= deadline:
                return running
            for name, state in running.items():
                if state != "STOPPING":
                    try:
                        self.rpc.supervisor.stopProcess(name, False)
                    except xmlrpc.client.Fault as exc:
                        # Stopped meanwhile, or removed by a supervisorctl update.
                        if exc.faultCode not in (Faults.NOT_RUNNING, Faults.BAD_NAME):
                            raise
            time.sleep(0.1)


def _process_name(entry, what: str) -> str:
    """``group:name`` of one entry of supervisord's answer to ``what``."""
    if not isinstance(entry, dict) or not isinstance(entry.get("group"), str) \
            or not isinstance(entry.get("name"), str):
        raise Unusable(f"supervisord's answer to {what} names no group and name: "
                       f"{excerpt(entry, 80)}")
    return f"{entry['group']}:{entry['name']}"


def process_states(infos) -> dict[str, str]:
    """supervisord's ``getAllProcessInfo`` answer as ``group:name`` -> state name;
    Unusable when it has another shape."""
    if not isinstance(infos, list):
        raise Unusable(f"supervisord's answer to getAllProcessInfo is not a list: "
                       f"{excerpt(infos, 80)}")
    states = {}
    for info in infos:
        name = _process_name(info, "getAllProcessInfo")
        if not isinstance(info.get("statename"), str):
            raise Unusable(f"supervisord's answer to getAllProcessInfo gives {name!r} no "
                           "state")
        states[name] = info["statename"]
    return states


def stop_results(results) -> list[tuple[str, int | None, str]]:
    """supervisord's ``stopProcessGroup`` answer: ``(group:name, status, description)``
    for each process it tried to stop; Unusable when it has another shape."""
    if not isinstance(results, list):
        raise Unusable(f"supervisord's answer to stopProcessGroup is not a list: "
                       f"{excerpt(results, 80)}")
    outcomes = []
    for result in results:
        name = _process_name(result, "stopProcessGroup")
        status = result.get("status")
        outcomes.append((name, status if isinstance(status, int) else None,
                         excerpt(result.get("description"), 200)))
    return outcomes


def _covers(target: str, process: str) -> bool:
    """Whether ``target`` (``group:name`` or ``group:*``) names ``process`` (``group:name``)."""
    return target == process or (target.endswith(":*") and process.startswith(target[:-1]))


def run_drain(config, args, rpc=None, where: str | None = None,
              prog: str = "zkwatcher-supervisor") -> int:
    """``zkwatcher-supervisor drain|undrain``; the exit status (0 done, 1 failed, 2 bad input).

    ``args``: the parsed command line (``command``, ``sections``, ``program``,
    ``all``, ``reason``, ``duration``, ``stop``, ``wait``, ``server``, and the
    flags :func:`supervisord.resolve_from` reads).  ``rpc``: a supervisord
    XML-RPC proxy already made (supervisorctl's own, in a plugin), with
    ``where`` naming it in messages; None: reached as the flags say.
    ``prog`` starts each error line.
    """
    from .status import (
        distrust,
        locate_status,
        of_an_earlier_version,
        owner_of,
        process_alive,
        reading_settings,
    )
    from .supervisord import SupervisordConfError, describe_error, resolve_from

    def fail(message: str, status: int = 1) -> int:
        print(f"{prog} {args.command}: {message}", file=sys.stderr)
        return status

    if sum([bool(args.sections), args.program is not None, args.all]) != 1:
        return fail("name the sections, or give --program NAME or --all (one of them)", 2)
    if args.command == "undrain" and (args.stop or args.duration):
        return fail("--stop and --for go with drain, not undrain", 2)
    if args.wait is not None and not args.stop:
        return fail("--wait goes with --stop", 2)
    duration = None
    if args.command == "drain" and args.duration:
        try:
            duration = parse_duration(args.duration)
        except ValueError as exc:
            return fail(str(exc), 2)
    if rpc is None:
        try:
            connection = resolve_from(args)
        except SupervisordConfError as exc:
            return fail(str(exc), 2)
        rpc, where = connection.proxy(), connection.describe()
    where = where or "supervisord"
    status_file, state = locate_status(config.filename, config.status_file)
    client = DrainClient(config, rpc, status_file,
                         owner_of(status_file) if state is not None else None)
    try:
        sections = client.select(args.sections, args.program, args.all)
    except ValueError as exc:
        return fail(str(exc), 2)
    reading = None
    if args.stop:
        # --stop stops nothing it has not seen gone from ZooKeeper.
        try:
            reading = reading_settings(config, state, getattr(args, "server", None))
        except ValueError as exc:
            return fail(f"--stop: cannot read ZooKeeper to confirm the deletion as this user "
                        f"({exc}); nothing drained")
    pid = (state or {}).get("pid")
    if not pid or not process_alive(pid):
        return fail(f"the listener for {config.filename} is not running (no live pid in "
                    f"{distrust(status_file) or status_file})")
    message = request(config.filename, args.command, sections, args.reason, duration,
                      by=args.username or "")
    if of_an_earlier_version(state):
        # A listener of an earlier version knows itself by the config's resolved path.
        message["config"] = os.path.realpath(config.filename)
    try:
        client.send(message)
    except Exception as exc:  # refused connection, bad credentials, xmlrpc fault
        return fail(f"{where}: {describe_error(exc)}")
    answer = client.wait_for(message["id"], "accepted", ACK_TIMEOUT)
    if answer is None:
        return fail(f"the listener (pid {pid}) did not acknowledge within {ACK_TIMEOUT:.0f}s; "
                    "is REMOTE_COMMUNICATION in its events = ?")
    if answer.get("error"):
        return fail(f"the listener refused the request: {printable(answer['error'])}")
    applied, refused = answer_outcome(answer, sections)
    listed = ", ".join(f"[{name}]" for name in applied)
    if refused or answer.get("refused_more"):
        if applied:
            print(f"{args.command}ed {listed}")
        for name, why in sorted(refused.items()):
            print(f"{prog} {args.command}: [{printable(name)}] not {args.command}ed: "
                  f"{printable(why)}",
                  file=sys.stderr)
        if answer.get("refused_more"):
            print(f"{prog} {args.command}: and {answer['refused_more']} more "
                  "section(s) like them", file=sys.stderr)
        return 1
    if not args.stop:
        print(f"{args.command}ed {listed}")
        return 0
    services = {service.name: service for service in config.services}
    remaining = wait_until_unadvertised(reading, [services[name] for name in applied],
                                        CONFIRM_TIMEOUT)
    if remaining:
        return fail(f"drained {listed}, but ZooKeeper still lists "
                    f"{', '.join(remaining)} after {CONFIRM_TIMEOUT:.0f}s; nothing was stopped")
    wait = args.wait if args.wait is not None else max(
        services[name].drain_seconds for name in sections)
    print(f"drained {listed}; ZooKeeper confirmed; stopping in {wait:g}s", flush=True)
    time.sleep(wait)
    try:
        stopped, failed = client.stop_programs(sections)
    except Exception as exc:
        return fail(f"stopping through {where}: {describe_error(exc)}")
    if stopped or not failed:  # names as supervisord gave them, escaped
        print("stopped " + (printable(", ".join(stopped)) if stopped
                            else "nothing (no bound program)"), flush=True)
    if failed:
        return fail(f"{where} could not stop " + printable(", ".join(failed)))
    return 0


def answer_outcome(answer: dict, sections: list[str]) -> tuple[list[str], dict[str, str]]:
    """The sections a listener's answer (as the status file's check let it through)
    says it applied, and those it refused with why."""
    if "applied" in answer:
        applied = [name for name in answer["applied"] if name in sections]
        refused = dict(answer.get("refused") or {})
        # Each one named or counted in refused_more by a real listener; not
        # applied either way.
        if not answer.get("refused_more"):
            refused.update({name: "not applied (not in the listener's answer)"
                            for name in sections if name not in applied and name not in refused})
        return applied, refused
    # An earlier version: it lists what it applied and drops the rest unsaid.
    applied = [name for name in answer.get("sections", []) if name in sections]
    return applied, {name: "not applied by the running listener (an earlier version; "
                     "reload or hand over first)" for name in sections if name not in applied}


def wait_until_unadvertised(settings, services: list, timeout: float) -> list[str]:
    """Wait until no znode advertises these services' endpoints, whoever holds it
    (our node, a zk_watcher's, a duplicate member), asking ZooKeeper with
    ``settings``; returns what is still there — or a description of why
    ZooKeeper could not be asked."""
    from .znode_reads import advertising  # imports kazoo

    deadline = time.monotonic() + timeout
    while True:
        try:
            found = advertising(settings, services, timeout=max(
                0.5, min(2.0, deadline - time.monotonic())))
            remaining = [node for nodes in found.values() for node in nodes]
        except ConnectionError as exc:  # unreachable, refused: we cannot confirm anything
            remaining = [f"(unknown: ZooKeeper {settings.hosts} unreachable: {exc})"]
        except PermissionError as exc:  # a member we may not read
            remaining = [f"(unknown: {exc})"]
        except Exception as exc:  # any other error ZooKeeper answered with
            remaining = [f"(unknown: ZooKeeper {settings.hosts}: {exc!r})"]
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(0.1)
