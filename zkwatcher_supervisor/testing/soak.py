"""A concurrency soak with a checker: real faults at once, and ZooKeeper checked against the rules.

A real supervisord runs a handful of ``sleep`` programs (two with
``autorestart = false``, a ``numprocs`` group, a group of two programs) and the
listener, which reaches a real ZooKeeper through a :class:`FaultProxy`.  Its
config has 8-16 sections bound by program (``name``, ``group:name``,
``group:*``), by check, or by both; checks are ``test -f FLAG`` with
``refresh = 1`` and rise/fall 1 or 2, some wrapped in an init-script style
``sh -c '(sleep 0.0N; echo x) & test -f FLAG'``.  Concurrent actors, each with
its own seeded random stream, do for the whole run:

* ``stop`` / ``start`` / ``restart`` programs and groups (supervisord's XML-RPC,
  the calls ``supervisorctl`` makes), and ``kill -9`` of program pids;
* create and remove the flag files;
* rewrite the config and send the listener SIGHUP (sometimes twice in a row):
  add, remove or rename a section, swap two sections' ``zookeeper_path``,
  change a section's ``zookeeper_data``;
* cut the ZooKeeper connection briefly, for longer than the session timeout
  (expiry), or silently for as long (the proxy stops forwarding, closes nothing);
* delete registered nodes by hand from another client.

At random moments every actor is paused and the checker compares ZooKeeper with
the health rules applied to the true state.

The quiet-point rule
--------------------
1. Pause: no actor starts an operation and every one in flight finishes
   (a cut or partition has been restored, a rewritten config has had its HUP).
2. Settle: poll ``getAllProcessInfo`` every 0.1 s until, for ``SETTLE`` (1.2 s,
   longer than supervisord's 1 s reaping poll) in a row, nothing changed and
   everything is at rest: each program RUNNING with a live, non-zombie pid,
   STOPPED, FATAL, or EXITED without ``autorestart``; the listener RUNNING; the
   proxy forwarding on a connection the server has answered (the listener holds
   a session).  Not settling within ``SETTLE_LIMIT`` is a violation.
3. Expected nodes: each section of the config last sent with SIGHUP whose
   matched processes (at least one) are all RUNNING and whose flag file exists,
   at ``<zookeeper_path>/<host>:<port>``, ephemeral, with its ``zookeeper_data``
   and the running listener's pid in the payload.  Nothing else under the base.
4. Due time of each node, i.e. when the listener could know its right state:
   the latest of the last SIGHUP, the last node deleted by hand, the listener's
   start, the current ZooKeeper session (the server's first answer on the
   proxied connection) and the first sighting of the section's processes in
   their final states.  For a section with a check whose processes are up, also
   the latest of its flag's last change, the HUP that created it (a rename
   creates) or changed its ``program``/``cmd``, and its processes' entry into
   RUNNING — plus ``refresh * max(rise, fall) + CHECK_SLACK``, the runs rise or
   fall needs (2.25 s at most here).  A node no section explains is due at the
   first part alone.  Since every one of those inputs lies before the settled
   period, nodes without a check are already due at the first read.
5. The bound: from due time + ``WINDOW`` (1 s) on, ZooKeeper must equal the
   expectation at every read (every 20 ms until the last node's bound).  Each
   node out of line after its bound is one violation; the checker reads on until
   ZooKeeper is back in line (at most ``CONVERGE_LIMIT``) and counts the time
   from the bound to then as seconds out of line.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import sys
import threading
import time
import xmlrpc.client
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from kazoo.client import KazooClient
from kazoo.exceptions import NoNodeError

from .. import drain
from .sandbox import FaultProxy, LocalSupervisord, LocalZooKeeper, wait_until

REFRESH = 1  # every check section's refresh, seconds
SETTLE = 1.2  # seconds of unchanged, at-rest process state before a check
SETTLE_LIMIT = 30.0
WINDOW = 1.0  # the bound: ZooKeeper must match this long after the due time
CHECK_SLACK = 0.25  # a check's own run time and timer granularity
CONVERGE_LIMIT = 20.0
POLL = 0.02
SESSION_TIMEOUT = 4.0
HOSTNAME = "soakhost"
PATHS = 5  # sections share zookeeper_path <base>/svc0 .. svc4
FLAGS = 4
MIN_SECTIONS, MAX_SECTIONS = 8, 16

# name -> autorestart; "pool" is one program with numprocs = 3, "duo" a group
# of d1 and d2.
PROCESSES = {
    "alpha:alpha": True, "beta:beta": False, "gamma:gamma": True,
    "pool:pool_00": True, "pool:pool_01": True, "pool:pool_02": True,
    "duo:d1": False, "duo:d2": True,
}
PROGRAM_SPECS = ["alpha", "beta", "gamma", "pool:*", "pool:pool_01", "duo:*", "duo:d1"]
# What the supervisor actor stops and starts: single processes and whole groups.
CONTROL_TARGETS = ["alpha", "beta", "gamma", "pool:pool_01", "duo:d1", "duo:d2", "pool:*", "duo:*"]
RELOADS = ["add", "remove", "rename", "swap paths", "change data"]
AT_REST = {"RUNNING", "STOPPED", "FATAL", "EXITED"}
LISTENER = "zkwatcher:zkwatcher"

SUPERVISORD_PROGRAMS = """
[program:alpha]
command = sleep 100000
startsecs = 0
autorestart = true

[program:beta]
command = sleep 100000
startsecs = 0
autorestart = false

[program:gamma]
command = sleep 100000
startsecs = 0
autorestart = true

[program:pool]
command = sleep 100000
process_name = %(program_name)s_%(process_num)02d
numprocs = 3
startsecs = 0
autorestart = true

[program:d1]
command = sleep 100000
startsecs = 0
autorestart = false

[program:d2]
command = sleep 100000
startsecs = 0
autorestart = true

[group:duo]
programs = d1,d2
"""


def member_key(parent: str, uid: str) -> str:
    return f"{parent}/member_<{uid}>"


# A node ZooKeeper named: ServerSet's member_<sequence>, Nerve's <instance_id>_<sequence>.
SEQUENTIAL_NODE = re.compile(r"(member|.+)_\d{10}")


def matches(spec: str, process: str) -> bool:
    """Whether a ``program`` value covers supervisord process ``group:name``."""
    group, name = process.split(":")
    want_group, _, want_name = spec.partition(":")
    want_name = want_name or want_group
    return group == want_group and want_name in ("*", name)


@dataclass(frozen=True)
class Section:
    """One service section of the listener's config."""

    name: str
    uid: str  # stays with the section through renames and moves
    port: int
    path: int  # index: zookeeper_path = <base>/svc<path>
    program: str | None = None
    flag: int | None = None  # cmd = test -f <flags>/f<flag>
    rise: int = 1
    fall: int = 1
    gen: int = 1  # bumped to change the payload
    # 0: the check is ``test -f FLAG``; N > 0: an init-script style shell that
    # leaves a child writing to its output N centiseconds after it exits.
    shell: int = 0
    # serverset or nerve: ZooKeeper names the node (member_<sequence>,
    # <instance_id>_<sequence>), so the checker finds it by the id in its
    # payload, and there must never be two.
    payload_format: str = "nd_service_registry"

    @property
    def sequential(self) -> bool:
        return self.payload_format in ("serverset", "nerve")

    def text(self, base: str, flags: Path) -> str:
        lines = [f"[{self.name}]"]
        if self.program:
            lines.append(f"program = {self.program}")
        if self.flag is not None:
            test = f"test -f {flags}/f{self.flag}"
            if self.shell:
                test = f"sh -c '(sleep 0.0{self.shell}; echo x) & {test}'"
            lines += [f"cmd = {test}", f"refresh = {REFRESH}", "timeout = 2",
                      f"rise = {self.rise}", f"fall = {self.fall}"]
        lines += [f"service_port = {self.port}", f"service_hostname = {HOSTNAME}",
                  f"zookeeper_path = {base}/svc{self.path}",
                  f"zookeeper_data = id={self.uid}, gen={self.gen}"]
        if self.payload_format != "nd_service_registry":
            lines.append(f"payload_format = {self.payload_format}")
        return "\n".join(lines) + "\n\n"

    def node(self, base: str) -> str:
        """The node's path; for a member, a stand-in naming its section's id."""
        if self.sequential:
            return member_key(f"{base}/svc{self.path}", self.uid)
        return f"{base}/svc{self.path}/{HOSTNAME}:{self.port}"

    def describe(self) -> str:
        parts = [f"program={self.program}"] if self.program else []
        if self.flag is not None:
            parts.append(f"cmd=test -f f{self.flag} rise={self.rise} fall={self.fall}")
        return f"[{self.name}] " + " ".join(parts)


@dataclass
class Operation:
    kind: str
    detail: str
    started: float  # time.monotonic()
    ended: float
    wall: float  # time.time() at the start


@dataclass
class Violation:
    kind: str  # missing | unexpected | wrong data | unsettled | duplicate member
    node: str
    section: str
    expected: str
    actual: str
    due_to: str  # the latest input the listener had to act on
    late_by: float  # seconds after the bound when first seen out of line
    out_of_line: float  # seconds from the bound until back in line
    converged: bool
    wall: float
    why: str  # the rule's inputs for this node
    before: list[str] = field(default_factory=list)  # operations since the last check
    log: list[str] = field(default_factory=list)  # listener log lines on the node


@dataclass
class Report:
    seed: int
    seconds: float
    operations: dict[str, int]
    checks: int
    violations: list[Violation]
    seconds_out_of_line: float
    listener_pids: list[int]
    listener_errors: list[str]  # each traceback in the listener's log, condensed
    workdir: str
    members_seen: int = 0  # distinct ServerSet members the checker saw
    nerve_seen: int = 0  # distinct Nerve nodes the checker saw

    def to_json(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        ops = ", ".join(f"{kind} {count}" for kind, count in sorted(self.operations.items()))
        kinds = Counter(v.kind for v in self.violations)
        after_checks = sum("check run" in v.due_to for v in self.violations)
        summary = ""
        if kinds:
            summary = (f" ({', '.join(f'{k} {n}' for k, n in sorted(kinds.items()))}; "
                       f"{after_checks} due after a check change, "
                       f"{len(self.violations) - after_checks} after other changes)")
        lines = [
            f"soak: seed {self.seed} (replays its choices), {self.seconds:.0f} s, "
            f"workdir {self.workdir}",
            f"operations: {sum(self.operations.values())} ({ops})",
            f"quiet-point checks: {self.checks}",
            f"violations: {len(self.violations)}{summary}",
            f"seconds out of line: {self.seconds_out_of_line:.2f}",
            f"ServerSet members seen: {self.members_seen}, Nerve nodes seen: {self.nerve_seen}",
            f"listener pids: {self.listener_pids}",
            f"listener errors: {len(self.listener_errors)}",
            *(f"    {error}" for error in self.listener_errors),
        ]
        for number, v in enumerate(self.violations, 1):
            stamp = time.strftime("%H:%M:%S", time.localtime(v.wall))
            back = (f"back in line {v.out_of_line:.2f} s after the bound" if v.converged
                    else f"still out of line {v.out_of_line:.0f} s after the bound")
            lines += [
                f"--- violation {number} at {stamp}: {v.kind} {v.node} {v.section}",
                f"    expected: {v.expected}",
                f"    actual:   {v.actual}  ({v.late_by:+.2f} s past the bound; {back})",
                f"    rule:     {v.why}",
                "    before (operations since the previous check):",
                *(f"      {line}" for line in v.before),
                "    listener log:",
                *(f"      {line}" for line in v.log),
            ]
        return "\n".join(lines)


class Soak:
    """Runs the actors and the checker for ``seconds`` against a running ZooKeeper."""

    def __init__(self, zookeeper: LocalZooKeeper, workdir: Path, seconds: float,
                 seed: int | None = None, check_period: float | None = None,
                 progress: Callable[[str], None] = lambda line: None) -> None:
        self.zookeeper = zookeeper
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.seconds = seconds
        self.seed = seed if seed is not None else random.SystemRandom().randrange(2**32)
        # How often a check may run at the least, if not every ``refresh``
        # (e.g. a listener that only runs checks on TICK_5).
        self.check_period = check_period
        self.progress = progress
        self.random = random.Random(f"{self.seed}-checker")
        self.base = f"/soak-{self.seed:08x}-{os.urandom(3).hex()}"
        self.flags = self.workdir / "flags"
        self.flags.mkdir(exist_ok=True)
        self.config_path = self.workdir / "zkwatcher.cfg"
        self.log_path = self.workdir / "zkwatcher.log"

        # What the checker needs; written by actors, read while they are paused.
        self.sections: dict[str, Section] = {}  # as last sent with SIGHUP
        self.last_hup = 0.0
        self.reset_at: dict[str, float] = {}  # section -> HUP that made its check start over
        # Drained sections (by name) and when each last changed; reloads and drain
        # requests are serialised so the model and the listener agree on their order.
        self.drained: set[str] = set()
        self.drain_changed: dict[str, float] = {}
        self._config_lock = threading.Lock()
        self.flag_changed: dict[int, float] = {}
        self.last_delete = 0.0
        self.operations: list[Operation] = []
        self.counts: Counter[str] = Counter()
        self._seen: dict[str, tuple[tuple[str, int], float]] = {}  # process -> state, since
        self._next_port = 10000
        self._next_uid = 0

        self._cond = threading.Condition()
        self._paused = False
        self._stopping = False
        self._busy = 0
        self._ops_lock = threading.Lock()
        self._errors: list[BaseException] = []
        self.duplicates: list[tuple[float, str, str]] = []  # (when, member, member)
        self.members: set[str] = set()
        self.nerve_nodes: set[str] = set()
        self.kept: set[str] = set()  # uids of sections a reload never removes

    # -- setup ------------------------------------------------------------------

    def _new_section(self, rng: random.Random, name: str | None = None) -> Section:
        self._next_uid += 1
        self._next_port += 1
        kind = rng.choice(["program", "check", "both"])
        program = rng.choice(PROGRAM_SPECS) if kind != "check" else None
        flag = rng.randrange(FLAGS) if kind != "program" else None
        return Section(name or f"s{self._next_uid}", f"u{self._next_uid}", self._next_port,
                       rng.randrange(PATHS), program, flag, rng.choice([1, 1, 2]),
                       rng.choice([1, 1, 2]), shell=rng.choice([0, 0, 1, 2, 5]),
                       payload_format=rng.choices(["nd_service_registry", "serverset", "nerve"],
                                                  [0.55, 0.25, 0.2])[0])

    def _config_text(self, sections: dict[str, Section]) -> str:
        header = (f"[zkwatcher]\nhosts = {self.proxy.hosts}\n"
                  f"session_timeout = {SESSION_TIMEOUT:g}\n"
                  f"status_file = {self.workdir / 'status.json'}\n\n")
        return header + "".join(s.text(self.base, self.flags) for s in sections.values())

    def _write_config(self, sections: dict[str, Section]) -> None:
        # Atomically: the listener may read it at any moment (a restart).
        temp = self.config_path.with_suffix(".tmp")
        temp.write_text(self._config_text(sections))
        os.replace(temp, self.config_path)

    def _start(self) -> None:
        self.proxy = FaultProxy(self.zookeeper.port)
        for flag in range(FLAGS):
            if self.random.random() < 0.6:
                (self.flags / f"f{flag}").touch()
        sections = [self._new_section(self.random) for _ in range(12)]
        # Make sure the rename bug's shape (a program-only section) and group:*
        # bindings are there from the start.
        sections[0] = replace(sections[0], program="pool:*", flag=None)
        sections[1] = replace(sections[1], program="duo:*", flag=0)
        sections[2] = replace(sections[2], program="alpha", flag=None)
        # And both sequential formats on a check alone, which flips, so new
        # members and Nerve nodes come and go in every run (left to chance,
        # 0.8 ** 12 of the runs have no Nerve section at all).  Renamed, never
        # removed.
        for index, payload_format, flag in ((3, "nerve", 1), (4, "serverset", 2)):
            section = sections[index]
            sections[index] = replace(section, payload_format=payload_format, program=None,
                                      flag=flag if section.flag is None else section.flag)
            self.kept.add(section.uid)
        self.sections = {s.name: s for s in sections}
        self._write_config(self.sections)
        self.last_hup = time.monotonic()
        listener = (
            "\n[eventlistener:zkwatcher]\n"
            f"command = {sys.executable} -m zkwatcher_supervisor -c {self.config_path}\n"
            "events = PROCESS_STATE,TICK_5,REMOTE_COMMUNICATION\n"
            "buffer_size = 1024\nstartsecs = 0\n"
            f"stopwaitsecs = 5\nstderr_logfile = {self.log_path}\n"
        )
        self.supervisord = LocalSupervisord(self.workdir / "supervisor",
                                            SUPERVISORD_PROGRAMS + listener).start()
        self.zk = KazooClient(hosts=self.zookeeper.hosts, timeout=10)
        self.zk.start(timeout=30)
        self.zk.ensure_path(self.base)

    def _stop(self) -> None:
        with contextlib.suppress(Exception):
            self.supervisord.stop()
        with contextlib.suppress(Exception):
            self.proxy.close()
        with contextlib.suppress(Exception):
            self.zk.stop()
            self.zk.close()

    # -- actors -----------------------------------------------------------------

    def _rpc(self):
        return self.supervisord.rpc().supervisor

    def _record(self, kind: str, detail: str, started: float, wall: float) -> None:
        with self._ops_lock:
            self.operations.append(Operation(kind, detail, started, time.monotonic(), wall))
            self.counts[kind] += 1

    def _actor(self, name: str, pause: tuple[float, float],
               act: Callable[[random.Random], tuple[str, str] | None]) -> None:
        rng = random.Random(f"{self.seed}-{name}")
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping, rng.uniform(*pause))
                    self._cond.wait_for(lambda: self._stopping or not self._paused)
                    if self._stopping:
                        return
                    self._busy += 1
                try:
                    started, wall = time.monotonic(), time.time()
                    done = act(rng)
                    if done is not None:
                        self._record(*done, started, wall)
                finally:
                    with self._cond:
                        self._busy -= 1
                        self._cond.notify_all()
        except BaseException as exc:  # a broken actor must fail the soak, not vanish
            self._errors.append(exc)
            with self._cond:
                self._stopping = True
                self._cond.notify_all()

    def _control(self, rng: random.Random) -> tuple[str, str] | None:
        target = rng.choice(CONTROL_TARGETS)
        rpc = self._rpc()
        group, _, member = target.partition(":")
        members = [p for p in PROCESSES if matches(target, p)]
        states = {f"{i['group']}:{i['name']}": i["statename"] for i in rpc.getAllProcessInfo()}
        running = [p for p in members if states[p] == "RUNNING"]
        action = rng.choice(["stop", "start", "restart"])
        if action == "stop" and not running:
            action = "start"
        elif action == "start" and len(running) == len(members):
            action = rng.choice(["stop", "restart"])
        try:
            if action in ("stop", "restart") and running:
                if member == "*":
                    rpc.stopProcessGroup(group, True)
                else:
                    rpc.stopProcess(target, True)
            if action in ("start", "restart"):
                if member == "*":
                    rpc.startProcessGroup(group, True)
                else:
                    rpc.startProcess(target, True)
        except xmlrpc.client.Fault as fault:
            # Raced with supervisord's own autorestart: still an operation done.
            return action, f"{target} ({fault.faultString})"
        return action, target

    def _kill(self, rng: random.Random) -> tuple[str, str] | None:
        running = [i for i in self._rpc().getAllProcessInfo()
                   if i["statename"] == "RUNNING" and f"{i['group']}:{i['name']}" != LISTENER]
        if not running:
            return None
        victim = rng.choice(running)
        with contextlib.suppress(ProcessLookupError):
            os.kill(victim["pid"], 9)
        return "kill -9", f"{victim['group']}:{victim['name']} pid {victim['pid']}"

    def _flip(self, rng: random.Random) -> tuple[str, str]:
        flag = rng.randrange(FLAGS)
        path = self.flags / f"f{flag}"
        if path.exists():
            path.unlink()
            detail = f"f{flag} removed"
        else:
            path.touch()
            detail = f"f{flag} created"
        self.flag_changed[flag] = time.monotonic()
        return "flag flip", detail

    def _drain(self, rng: random.Random) -> tuple[str, str] | None:
        """Drain a section, or undrain one, through supervisord as ``drain`` does."""
        with self._config_lock:
            # A section a reload added a moment ago may not be loaded yet.
            settled = [name for name in sorted(self.sections)
                       if time.monotonic() - self.reset_at.get(name, 0.0) > 1.0]
            if not settled:
                return None
            name = rng.choice(settled)
            action = "undrain" if name in self.drained else "drain"
            request = drain.request(str(self.config_path), action, [name], "soak", by="soak")
            self._rpc().sendRemoteCommEvent(drain.EVENT_TYPE, json.dumps(request))
            (self.drained.discard if action == "undrain" else self.drained.add)(name)
            self.drain_changed[name] = time.monotonic()
        return action, f"[{name}]"

    def _reload(self, rng: random.Random, cycle: list[str]) -> None:
        """Rewrite the config and send SIGHUP; a quarter of the time, twice in a row."""
        with self._config_lock:
            self._reload_locked(rng, cycle)

    def _reload_locked(self, rng: random.Random, cycle: list[str]) -> None:
        for again in range(2 if rng.random() < 0.25 else 1):
            started, wall = time.monotonic(), time.time()
            if not cycle:  # every kind in turn, in a random order
                cycle.extend(rng.sample(RELOADS, len(RELOADS)))
            change, detail = self._change_config(rng, cycle.pop())
            self._record(f"reload: {change}", detail + (" (a second HUP at once)" if again else ""),
                         started, wall)

    def _change_config(self, rng: random.Random, change: str) -> tuple[str, str]:
        sections = dict(self.sections)
        if change == "add" and len(sections) >= MAX_SECTIONS:
            change = "remove"
        elif change == "remove" and len(sections) <= MIN_SECTIONS:
            change = "add"
        names = sorted(sections)
        reset: list[str] = []
        if change == "add":
            section = self._new_section(rng)
            sections[section.name] = section
            reset.append(section.name)
            detail = f"add {section.describe()} at {section.node(self.base)}"
        elif change == "remove":
            # Not the sections that show sequential nodes coming and going (a
            # seed once removed the only Nerve section a second after start).
            name = rng.choice([name for name in names if sections[name].uid not in self.kept])
            detail = f"remove {sections.pop(name).describe()}"
        elif change == "rename":
            old = sections.pop(rng.choice(names))
            self._next_uid += 1
            new = replace(old, name=f"s{self._next_uid}")
            sections[new.name] = new
            reset.append(new.name)
            if old.name in self.drained:  # a section renamed onto its own node keeps its drain
                self.drained.add(new.name)
                self.drain_changed[new.name] = time.monotonic()
            detail = f"rename [{old.name}] to [{new.name}], same node {old.node(self.base)}"
        elif change == "swap paths" and len(settled := [
                name for name in names
                if time.monotonic() - self.reset_at.get(name, 0.0) > 1.0]) >= 2:
            # Not a section renamed a moment ago: the listener may read both
            # changes at once, and a rename that also moves the node is no
            # rename (the drain would not follow it).
            a, b = rng.sample(settled, 2)
            sections[a] = replace(sections[a], path=self.sections[b].path)
            sections[b] = replace(sections[b], path=self.sections[a].path)
            detail = f"swap zookeeper_path of [{a}] and [{b}]"
        else:
            change = "change data"
            name = rng.choice(names)
            sections[name] = replace(sections[name], gen=sections[name].gen + 1)
            detail = f"[{name}] zookeeper_data gen={sections[name].gen}"
        self._write_config(sections)
        self._rpc().signalProcess("zkwatcher", "HUP")
        now = time.monotonic()
        self.sections, self.last_hup = sections, now
        self.drained &= set(sections)  # a drain goes with its section
        for name in reset:
            self.reset_at[name] = now
        return change, detail

    def _fault_zookeeper(self, rng: random.Random, cycle: list[str]) -> tuple[str, str]:
        if not cycle:  # every kind in turn, in a random order
            cycle.extend(rng.sample(["cut", "expiry", "partition"], 3))
        kind = cycle.pop()
        if kind == "cut":
            held = rng.uniform(0.2, SESSION_TIMEOUT * 0.4)
            self.proxy.cut()
        elif kind == "expiry":
            held = SESSION_TIMEOUT + rng.uniform(1.0, 2.0)
            self.proxy.cut()
        else:
            held = SESSION_TIMEOUT + rng.uniform(1.0, 2.0)
            self.proxy.freeze()
        time.sleep(held)
        self.proxy.restore()
        return f"zookeeper {kind}", f"{held:.1f} s"

    def _delete(self, rng: random.Random) -> tuple[str, str] | None:
        nodes = sorted(entry[2] for entry in self._read_nodes().values())
        if not nodes:
            return None
        node = rng.choice(nodes)
        try:
            self.zk.delete(node)
        except NoNodeError:
            return None
        self.last_delete = time.monotonic()
        return "delete by hand", node

    # -- checker ----------------------------------------------------------------

    def _read_nodes(self) -> dict[str, tuple[bytes, int, str]]:
        """Every node under the base path: path -> (data, ephemeralOwner, znode).

        ServerSet members and Nerve nodes are keyed by the section id in their
        payload; a second node for the same id is recorded in ``self.duplicates``.
        """
        found = {}
        for parent in self.zk.get_children(self.base):
            parent = f"{self.base}/{parent}"
            try:
                children = self.zk.get_children(parent)
            except NoNodeError:
                continue
            for child in children:
                node = f"{parent}/{child}"
                try:
                    data, stat = self.zk.get(node)
                except NoNodeError:
                    continue
                key = node
                if SEQUENTIAL_NODE.fullmatch(child):
                    try:
                        key = member_key(parent, json.loads(data)["id"])
                    except (ValueError, KeyError, TypeError):
                        pass
                    if key in found:
                        self.duplicates.append((time.time(), found[key][2], node))
                    if child.startswith("member_"):
                        self.members.add(node)
                    else:
                        self.nerve_nodes.add(node)
                found[key] = (data, stat.ephemeralOwner, node)
        return found

    def _pause(self) -> None:
        with self._cond:
            self._paused = True
            self._cond.wait_for(lambda: self._busy == 0)

    def _resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")

    def _settle(self) -> tuple[dict[str, tuple[str, int]], dict[str, float], str | None]:
        """Wait until the true state is at rest (see the module docstring).

        Returns each process's (state, pid), when its final state was first
        seen, and why it did not settle (None when it did).  A RUNNING process
        whose pid was already seen at an earlier check has been RUNNING since
        then (a restart changes the pid); any other state is dated from this
        check's first poll at the earliest, as it may have left and come back.
        """
        last_change = time.monotonic()
        last_key = None
        started = time.monotonic()
        while True:
            now = time.monotonic()
            states = {f"{i['group']}:{i['name']}": (i["statename"], i["pid"])
                      for i in self._rpc().getAllProcessInfo()}
            for process, state in states.items():
                if self._seen.get(process, (None, 0.0))[0] != state:
                    self._seen[process] = (state, now)
            first_seen = {process: seen if state[0] == "RUNNING" else max(seen, started)
                          for process, (state, seen) in self._seen.items()}
            unrest = []
            for process, (state, pid) in states.items():
                restarts = PROCESSES.get(process, True)
                if state not in AT_REST or (state == "EXITED" and restarts):
                    unrest.append(f"{process} {state}")
                elif state == "RUNNING" and not self._alive(pid):
                    unrest.append(f"{process} RUNNING but pid {pid} is gone")
            if states.get(LISTENER, ("", 0))[0] != "RUNNING":
                unrest.append(f"listener {states.get(LISTENER)}")
            if self.proxy.frozen or not self.proxy.accepting \
                    or self.proxy.answered_connections() < 1:
                unrest.append("no ZooKeeper session through the proxy")
            key = (tuple(sorted(states.items())), self.proxy.answered_at,
                   self.proxy.answered_connections(), tuple(unrest))
            if key != last_key:
                last_key, last_change = key, now
            if not unrest and now - last_change >= SETTLE:
                return states, first_seen, None
            if now - started > SETTLE_LIMIT:
                return states, first_seen, "; ".join(unrest) or "state kept changing"
            time.sleep(0.1)

    def _expectation(self, states: dict[str, tuple[str, int]], first_seen: dict[str, float]):
        """Expected nodes; each node's due time, what set it, and the rule's inputs."""
        flags = {flag for flag in range(FLAGS) if (self.flags / f"f{flag}").exists()}
        pid = states[LISTENER][1]
        # A listener (re)started by supervisord starts every section afresh.
        started = first_seen[LISTENER]
        common = max([(self.last_hup, "a reload"), (self.last_delete, "a deletion by hand"),
                      (self.proxy.answered_at or 0.0, "a new ZooKeeper connection"),
                      (started, "the listener's start")])
        expected: dict[str, bytes] = {}
        due: dict[str, tuple[float, str]] = {}  # node -> (due time, what set it)
        why: dict[str, str] = {}
        owner: dict[str, str] = {}
        for section in self.sections.values():
            node = section.node(self.base)
            owner[node] = section.name
            inputs = [common]
            reasons = []
            process_up = True
            if section.program:
                matched = [p for p in states if matches(section.program, p)]
                process_up = bool(matched) and all(states[p][0] == "RUNNING" for p in matched)
                inputs += [(first_seen[p], f"{p} {states[p][0]}") for p in matched]
                reasons.append(", ".join(f"{p}={states[p][0]}" for p in matched))
            check_up = True
            if section.flag is not None:
                check_up = section.flag in flags
                reasons.append(f"f{section.flag} {'present' if check_up else 'absent'}")
                if process_up:
                    # The runs a change needs before rise/fall lets it through.
                    period = max(REFRESH, self.check_period or REFRESH)
                    runs = max(section.rise, section.fall)
                    after = period * runs + CHECK_SLACK
                    checked = [(self.flag_changed.get(section.flag, 0.0), f"f{section.flag} "
                                f"{'created' if check_up else 'removed'}"),
                               (self.reset_at.get(section.name, 0.0), "the reload adding it"),
                               (started, "the listener's start")]
                    checked += [(first_seen[p], f"{p} entering RUNNING") for p in states
                                if section.program and matches(section.program, p)]
                    inputs += [(at + after, f"{what} + {runs} check run(s)")
                               for at, what in checked]
            drained = section.name in self.drained
            if section.name in self.drain_changed:
                inputs.append((self.drain_changed[section.name],
                               "an undrain" if not drained else "a drain"))
            if drained:
                reasons.append("drained")
            if process_up and check_up and not drained:
                expected[node] = json.dumps({"id": section.uid, "gen": str(section.gen),
                                             "pid": None if section.sequential else pid},
                                            sort_keys=True).encode()
            due[node] = max(inputs)
            why[node] = f"{section.describe()}: {'; '.join(reasons)} -> " \
                        f"{'up' if process_up and check_up else 'down'}; due after {due[node][1]}"
        return expected, due, why, owner, common

    @staticmethod
    def _view(data: bytes) -> bytes:
        """The part of a payload the checker compares: user data and pid."""
        try:
            payload = json.loads(data)
            return json.dumps({k: payload.get(k) for k in ("id", "gen", "pid")},
                              sort_keys=True).encode()
        except (ValueError, AttributeError):
            return data

    def _differences(self, expected: dict[str, bytes]) -> dict[str, tuple[str, str, str]]:
        """node -> (kind, expected, actual) for every node out of line now."""
        actual = self._read_nodes()
        diffs = {}
        for node in set(expected) | set(actual):
            want = expected.get(node)
            have = actual.get(node)
            if want is None:
                diffs[node] = ("unexpected", "absent", have[0].decode(errors="replace"))
            elif have is None:
                diffs[node] = ("missing", want.decode(), "absent")
            elif self._view(have[0]) != want or have[1] == 0:
                what = have[0].decode(errors="replace") + ("" if have[1] else " (persistent)")
                diffs[node] = ("wrong data", want.decode(), what)
        return diffs

    def _check(self, since: float, log_offset: int) -> list[Violation]:
        """One quiet-point check; returns its violations."""
        states, first_seen, unsettled = self._settle()
        if unsettled is not None:
            return [Violation("unsettled", "-", "-", "processes at rest, a ZooKeeper session",
                              unsettled, "-", 0.0, SETTLE_LIMIT, False, time.time(),
                              "the true state must settle", self._ops_since(since),
                              self._log_since(log_offset, ["Traceback", "ERROR", "rror"]))]
        expected, due, why, owner, common = self._expectation(states, first_seen)
        last_bound = max([common, *due.values()])[0] + WINDOW
        found: dict[str, Violation] = {}
        first_bound: dict[str, float] = {}
        while True:
            read_at = time.monotonic()
            diffs = self._differences(expected)
            for node, (kind, want, have) in diffs.items():
                node_due, due_to = due.get(node, common)
                node_bound = node_due + WINDOW
                if read_at > node_bound and node not in found:
                    found[node] = Violation(
                        kind, node, f"[{owner[node]}]" if node in owner else "(no section)",
                        want, have, due_to, read_at - node_bound, 0.0, False, time.time(),
                        why.get(node, "no section of the loaded config has this node; "
                                f"due after {due_to}"),
                        self._ops_since(since, self._needles(node, owner.get(node))))
                    first_bound[node] = node_bound
            if found:
                if not diffs:
                    for node, violation in found.items():
                        violation.out_of_line = read_at - first_bound[node]
                        violation.converged = True
                    break
                if read_at - min(first_bound.values()) > CONVERGE_LIMIT:
                    for node, violation in found.items():
                        violation.out_of_line = read_at - first_bound[node]
                    break
            elif read_at > last_bound and not diffs:
                break
            time.sleep(POLL)
        for node, violation in found.items():  # the log up to recovery, too
            violation.log = self._log_since(log_offset, self._needles(node, owner.get(node)))
        return list(found.values())

    def _needles(self, node: str, name: str | None) -> list[str]:
        """What operations and log lines about ``node`` (of section ``name``) mention."""
        needles = [node]
        section = self.sections.get(name) if name else None
        if section is not None:
            needles.append(f"[{section.name}]")
            if section.program:
                needles.append(section.program.split(":")[0])
            if section.flag is not None:
                needles.append(f"f{section.flag} ")
        return needles

    def _ops_since(self, since: float, needles: list[str] | None = None) -> list[str]:
        """Operations ended since ``since``: all of them, or those mentioning a needle
        plus every reload and ZooKeeper fault."""
        with self._ops_lock:
            recent = sorted((op for op in self.operations if op.ended >= since
                             and (needles is None or op.kind.startswith(("reload", "zookeeper"))
                                  or any(n in op.detail for n in needles))),
                            key=lambda op: op.wall)
        return [f"{time.strftime('%H:%M:%S', time.localtime(op.wall))}"
                f".{int(op.wall % 1 * 1000):03d} {op.kind}: {op.detail}" for op in recent]

    def _log_since(self, offset: int, needles: list[str], limit: int = 30) -> list[str]:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(offset)
                text = log.read().decode(errors="replace")
        except OSError:
            return []
        needles = [*needles, "reload", "ZooKeeper", "Traceback", "Error", "session"]
        lines = [line for line in text.splitlines() if any(n in line for n in needles)]
        return lines[-limit:]

    def _log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    # -- run --------------------------------------------------------------------

    def run(self) -> Report:
        started = time.monotonic()
        violations: list[Violation] = []
        checks = 0
        pids: list[int] = []
        self._start()
        try:
            wait_until(lambda: self._read_nodes(), 30, what="first registrations")
            zk_cycle: list[str] = []
            reload_cycle: list[str] = []
            actors = [
                ("control", (0.3, 1.5), self._control),
                ("kill", (0.5, 2.0), self._kill),
                ("flags", (0.3, 1.2), self._flip),
                ("reload", (0.8, 2.5), lambda rng: self._reload(rng, reload_cycle)),
                ("zookeeper", (1.0, 4.0), lambda rng: self._fault_zookeeper(rng, zk_cycle)),
                ("delete", (0.5, 2.0), self._delete),
                ("drain", (0.8, 2.5), self._drain),
            ]
            threads = [threading.Thread(target=self._actor, args=actor, name=actor[0],
                                        daemon=True) for actor in actors]
            for thread in threads:
                thread.start()
            deadline = started + self.seconds
            while time.monotonic() < deadline and not self._errors:
                since, log_offset = time.monotonic(), self._log_size()
                chaos = self.random.uniform(2.5, 6.0)
                with self._cond:
                    self._cond.wait_for(lambda: self._stopping,
                                        min(chaos, max(0.0, deadline - time.monotonic())))
                self._pause()
                try:
                    found = self._check(since, log_offset)
                finally:
                    self._resume()
                checks += 1
                violations += found + self._duplicate_violations(since)
                pid = self._rpc().getProcessInfo("zkwatcher")["pid"]
                if pid and pid not in pids:
                    pids.append(pid)
                self.progress(f"check {checks} at {time.monotonic() - started:.0f} s: "
                              f"{len(found)} violation(s), {sum(self.counts.values())} ops")
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            for thread in threads:
                thread.join(30)
        finally:
            self._stop()
        if self._errors:
            raise RuntimeError("an actor failed") from self._errors[0]
        return Report(self.seed, time.monotonic() - started, dict(self.counts), checks,
                      violations, sum(v.out_of_line for v in violations), pids,
                      self._tracebacks(), str(self.workdir), len(self.members),
                      len(self.nerve_nodes))

    def _duplicate_violations(self, since: float) -> list[Violation]:
        """Two members for one section seen in one listing: a violation at any time."""
        found, self.duplicates = self.duplicates, []
        return [Violation("duplicate member", second, "-", first, second, "-", 0.0, 0.0,
                          False, wall, "at most one member per section, always",
                          self._ops_since(since))
                for wall, first, second in found]

    def _tracebacks(self) -> list[str]:
        """Each traceback in the listener's log as one line: when, where, what."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []
        found = []
        for number, line in enumerate(lines):
            if not line.startswith("Traceback"):
                continue
            # The last frame and the exception line that ends the block.
            # (Other threads' log lines may be interleaved: skip them.)
            block = lines[number + 1:number + 60]
            end = next((i for i, text in enumerate(block)
                        if text and text[0] not in " ^~" and not text[:4].isdigit()), None)
            if end is None:
                continue
            frames = [text.strip() for text in block[:end] if text.strip().startswith("File")]
            stamp = next((text[:23] for text in reversed(lines[max(0, number - 3):number])
                          if text[:4].isdigit()), "?")
            found.append(f"{stamp}: {block[end]} at {frames[-1] if frames else '?'}")
        return found
