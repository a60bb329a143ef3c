"""Drain: take sections out of discovery without stopping them.

The request travels through supervisord itself: ``drain``/``undrain`` call
``supervisor.sendRemoteCommEvent`` over supervisord's XML-RPC (so they work
wherever supervisorctl works, with supervisord's own access control), and
every listener subscribed to ``REMOTE_COMMUNICATION`` receives it.  A request
names the config it is meant for, so only that listener acts.  The listener
acknowledges in its status file: first that it applied the request, then
that ZooKeeper confirmed the deletions.

Drained sections are kept in a state file in the listener's private state
directory, so they stay drained across a crash, a restart of the listener or
of supervisord, and a reload.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import re
import sys
import time
import uuid
from dataclasses import asdict, dataclass

from . import session_file

log = logging.getLogger(__name__)

EVENT_TYPE = "zkwatcher-supervisor"
ACK_TIMEOUT = 2.0
CONFIRM_TIMEOUT = 5.0
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Drain:
    """Why and until when a section is out of discovery."""

    reason: str
    by: str
    since: float  # wall clock
    until: float | None = None  # wall clock; None: until undrain


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1d`` -> seconds."""
    match = _DURATION.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 2h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def state_path(config_filename: str) -> str:
    return session_file.state_path(config_filename, "drained")


def load(path: str) -> dict[str, Drain]:
    """The drained sections saved at ``path``; a file we cannot trust is ignored."""

    def parse(saved) -> dict[str, Drain]:
        return {str(name): Drain(str(entry["reason"]), str(entry["by"]), float(entry["since"]),
                                 None if entry.get("until") is None else float(entry["until"]))
                for name, entry in saved.items()}

    return session_file.read_private_json(path, "drain state", parse) or {}


def save(path: str, drains: dict[str, Drain]) -> None:
    if not session_file.safe_directory(os.path.dirname(path)):
        raise OSError(f"{os.path.dirname(path)} is not a private directory")
    text = json.dumps({name: asdict(drain) for name, drain in sorted(drains.items())})
    session_file.write_atomically(path, text, 0o644)


def request(config_filename: str, action: str, sections: list[str], reason: str = "",
            until: float | None = None, by: str = "") -> dict:
    return {"config": os.path.realpath(config_filename), "id": uuid.uuid4().hex,
            "action": action, "sections": sections, "reason": reason, "until": until,
            "by": by or getpass.getuser()}


def parse_event(payload: str) -> dict | None:
    """The request in a REMOTE_COMMUNICATION payload (``type:T\\nDATA``), if it is ours."""
    header, _, data = payload.partition("\n")
    if header.strip() != f"type:{EVENT_TYPE}":
        return None
    try:
        parsed = json.loads(data)
    except ValueError:
        log.warning("ignoring a malformed drain request: %r", data[:200])
        return None
    return parsed if isinstance(parsed, dict) else None


class DrainClient:
    """The ``drain``/``undrain`` commands: send, wait for the acknowledgement, maybe stop."""

    def __init__(self, config, rpc, status_file: str) -> None:
        self.config = config
        self.rpc = rpc
        self.status_file = status_file

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

    def _status(self) -> dict:
        from .status import read_status_file

        return read_status_file(self.status_file) or {}

    def wait_for(self, request_id: str, field: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self._status().get("requests", {}).get(request_id)
            if answer is not None and answer.get(field):
                return answer
            time.sleep(0.05)
        return None

    def send(self, message: dict) -> None:
        self.rpc.supervisor.sendRemoteCommEvent(EVENT_TYPE, json.dumps(message))

    def stop_programs(self, sections: list[str]) -> list[str]:
        """Stop the programs bound to ``sections`` (once each); returns what was stopped."""
        stopped = []
        for name in sections:
            service = next(s for s in self.config.services if s.name == name)
            if service.program is None:
                continue
            spec = service.program
            target = f"{spec.group}:*" if spec.name is None else f"{spec.group}:{spec.name}"
            if target in stopped:
                continue
            if spec.name is None:
                self.rpc.supervisor.stopProcessGroup(spec.group, True)
            else:
                self.rpc.supervisor.stopProcess(target, True)
            stopped.append(target)
        return stopped


def run_drain(config, args) -> int:
    """``zkwatcher-supervisor drain|undrain``; the exit status (0 done, 1 failed, 2 bad input)."""
    from supervisor import childutils

    from .handoff import DEFAULT_SERVER_URL
    from .status import process_alive, read_status_file

    def fail(message: str, status: int = 1) -> int:
        print(f"zkwatcher-supervisor {args.command}: {message}", file=sys.stderr)
        return status

    if sum([bool(args.sections), args.program is not None, args.all]) != 1:
        return fail("name the sections, or give --program NAME or --all (one of them)", 2)
    until = None
    if args.command == "drain" and args.duration:
        try:
            until = time.time() + parse_duration(args.duration)
        except ValueError as exc:
            return fail(str(exc), 2)
    server_url = args.serverurl or DEFAULT_SERVER_URL
    env = {"SUPERVISOR_SERVER_URL": server_url}
    if args.username:
        env.update(SUPERVISOR_USERNAME=args.username, SUPERVISOR_PASSWORD=args.password or "")
    client = DrainClient(config, childutils.getRPCInterface(env), config.status_file)
    try:
        sections = client.select(args.sections, args.program, args.all)
    except ValueError as exc:
        return fail(str(exc), 2)
    state = read_status_file(config.status_file)
    pid = (state or {}).get("pid")
    if not pid or not process_alive(pid):
        return fail(f"the listener for {config.filename} is not running (no live pid in "
                    f"{config.status_file})")
    message = request(config.filename, args.command, sections, args.reason, until,
                      by=args.username or "")
    try:
        client.send(message)
    except Exception as exc:  # refused connection, bad credentials, xmlrpc fault
        return fail(f"supervisord at {server_url}: {exc}")
    if client.wait_for(message["id"], "accepted", ACK_TIMEOUT) is None:
        return fail(f"the listener (pid {pid}) did not acknowledge within {ACK_TIMEOUT:.0f}s; "
                    "is REMOTE_COMMUNICATION in its events = ?")
    listed = ", ".join(f"[{name}]" for name in sections)
    if not args.stop:
        print(f"{args.command}ed {listed}")
        return 0
    if client.wait_for(message["id"], "confirmed", CONFIRM_TIMEOUT) is None:
        return fail(f"drained {listed}, but ZooKeeper has not confirmed the deletion within "
                    f"{CONFIRM_TIMEOUT:.0f}s; nothing was stopped")
    services = {service.name: service for service in config.services}
    wait = args.wait if args.wait is not None else max(
        services[name].drain_seconds for name in sections)
    print(f"drained {listed}; ZooKeeper confirmed; stopping in {wait:g}s", flush=True)
    time.sleep(wait)
    try:
        stopped = client.stop_programs(sections)
    except Exception as exc:
        return fail(f"stopping through supervisord at {server_url}: {exc}")
    print("stopped " + (", ".join(stopped) if stopped else "nothing (no bound program)"))
    return 0
