"""The supervisord event listener: one event loop that owns all state.

Everything that can change what we register arrives on the main thread's
event loop (:mod:`.loop`) and is handled there, in order, to completion:
supervisord's events on stdin, check processes and probes, the pidfds of
bound programs, signals (TERM, INT, HUP, USR2), timers, and the results of
slow work done elsewhere (reading a reloaded config, supervisord's XML-RPC
answer).  The :class:`Controller` turns them into health (:mod:`.health`, pure)
and health into the set of znodes we want, which it hands to the registry —
the only other thread that matters, fed by that one ordered stream.  USR2
hands the ZooKeeper session, and so every node, to the next listener.

Nothing on the path from reading an event to answering it waits for a check,
for ZooKeeper, or for a file.
"""

from __future__ import annotations

import logging
import os
import posixpath
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace

from . import drain, statedir
from .backoff import backoff
from .checks import (
    OUTPUT_TAIL_BYTES,
    CheckOutcome,
    CheckRunner,
    close_inherited_fds_on_exec,
    import_for,
)
from .config import Config, ConfigError, ServiceSettings, load_config
from .drains import DrainKeeper
from .health import RUNNING, CheckRun, Health
from .loop import EventLoop, SingleFlight, Timer, offload
from .payload import node_payload
from .pidwatch import PidWatcher
from .privilege import identity_of, root_warnings, switch_error
from .protocol import SupervisorChannel, claim_stdout, parse_process_state
from .registry import Registry
from .session_file import SessionStore
from .status import StatusPublisher, process_alive
from .untrusted import DropLog, excerpt

TYPE_CHECKING = False  # typing itself is not imported at run time (half a MB)
if TYPE_CHECKING:
    from typing import BinaryIO, TextIO

log = logging.getLogger(__name__)

PROCESS_STATE_PREFIX = "PROCESS_STATE_"
# The exit of a hand-over (SIGUSR2): not 0, so that supervisord's default
# autorestart = unexpected starts the successor (EX_TEMPFAIL: "run me again").
EXIT_HANDED_OVER = 75
# How long to wait for supervisord's XML-RPC answer before saying so in the log.
RPC_TIMEOUT = 5.0
# Shutdown budget: ZooKeeper's session close, and killing running checks.
REGISTRY_STOP_TIMEOUT = 0.7
CHECKS_STOP_TIMEOUT = 0.1
# A SIGUSR2 whose look at the state directory (a stat: an NFS mount may hang it)
# takes longer is refused; ``handoff`` waits 15 s for an answer.
HAND_OVER_LOOK_TIMEOUT = 5.0
EXIT_CRASH = 1
# After a restart, nodes of the reattached session that nothing wants are kept
# until every section's health is known again (first check results, the
# XML-RPC snapshot) — or this long past the slowest check's timeout.
SETTLE_SLACK = 2.0
# TERM/INT: deregister everything and exit.  HUP: reload.  USR2: exit and
# leave the session (and so every node) to the listener supervisord starts next.
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)


@dataclass(frozen=True)
class Registration:
    """A node we want while its section is up."""

    service: ServiceSettings  # the settings it was built from
    path: str
    created: float
    data: bytes


class Controller:
    """Turns supervisord events and check results into the set of registered znodes.

    Every method runs on the event loop's thread; nothing here is shared.
    """

    def __init__(self, config: Config, registry: Registry, loop: EventLoop,
                 hosts_override: str | None = None, drain_path: str | None = None,
                 status_path: str | None = None, start_drained: bool = False) -> None:
        self.config = config
        self.config_key = statedir.config_key(config.filename)
        self.loop = loop
        self.registry = registry
        self.hosts_override = hosts_override
        self.services = {service.name: service for service in config.services}
        self.health = Health(config.services, loop.clock())
        self.checks = CheckRunner(loop, self._on_check_result)
        self.pids = PidWatcher(loop, self._on_process_died)
        self.status_path = status_path or config.status_file or statedir.state_path(
            config.filename, "status")
        self.status = StatusPublisher(loop, self.status_path, self.snapshot)
        self.drops = DropLog(clock=loop.clock)  # outside input we could not use
        self.handoff_refused: dict | None = None  # the last SIGUSR2 we could not honour
        self.handing_over = False
        self._hand_over_look: int | None = None  # the SIGUSR2 look under way, if any
        self._hand_over_looks = 0
        self._hand_over_timer: Timer | None = None
        self._hung_look: int | None = None  # a look past its time, still not answered
        self._registrations: dict[str, Registration] = {}  # by section, while up
        self._holder: dict[str, str] = {}  # znode path -> the section registering it
        self._wanted: dict[str, bytes] = {}  # what the registry was last told
        self._dirty: set[str] = set(self.services)  # sections to bring in line
        self._passes_to_log: set[str] = set()  # passes the next sync reports
        self._last_checks: dict[str, tuple[float, CheckOutcome]] = {}  # wall time, outcome
        self._check_timer: Timer | None = None
        # Ordering of process news: a snapshot requested before an event must
        # not override that event.
        self._event_seq = 0
        self._process_seq: dict[tuple[str, str], int] = {}
        self.rpc_env: dict[str, str] | None = None  # environment for supervisord's XML-RPC
        self._snapshot_request = 0  # id of the newest snapshot asked for
        self._snapshot_applied = 0
        self._snapshot = SingleFlight(self._fetch_snapshot)
        self._snapshot_failures = 0
        self._reload = SingleFlight(self._read_reload)
        # Long enough for the slowest section to reach a verdict: rise passes
        # (one now, the rest a refresh apart), each within its timeout.
        self._settle_by = loop.clock() + SETTLE_SLACK + max(
            ((service.rise - 1) * max(1, service.refresh) + service.timeout
             for service in config.services), default=0.0)
        self._settled = False
        self._settle_pending = False  # told to the registry at the end of this pass
        self._snapshot_answered = False
        # Drained sections (operator's orders, kept across restarts).
        self.drains = DrainKeeper(loop, drain_path, config.filename, self.services,
                                  self.drops, self._section_changed, self.status.changed,
                                  start_all_drained=start_drained,
                                  earlier_version_ran=registry.resumes_earlier_version)
        loop.on_idle(self.pump)
        registry.on_change = lambda: loop.post(self.status.changed)
        registry.on_fatal = loop.fail

    def _section_changed(self, name: str) -> None:
        self._dirty.add(name)  # not a bound set method: pump replaces the set

    def start(self) -> None:
        self.registry.start()
        self.status.start()
        self._snapshot_if_bound()
        self._check_settled()

    def _check_settled(self) -> None:
        """Tell the registry once every section's health is known after start."""
        if self._settled:
            return
        snapshot_known = self._snapshot_answered or not self._snapshot.busy
        # A check's verdict is in when rise/fall have decided it, not at its first
        # result: a section with rise 2 is down after one pass, yet healthy.
        checks_known = all(
            section.check_up or section.failures >= section.service.fall
            or not section.process_up
            for section in self.health.sections.values() if section.service.cmd is not None)
        if (snapshot_known and checks_known) or self.loop.clock() >= self._settle_by:
            # Not told here: the verdicts that settled it may still be on their
            # way to the registry; pump tells it after the update that carries them.
            self._settled = True
            self._settle_pending = True
        else:
            self.loop.call_later(0.1, self._check_settled)

    def _snapshot_if_bound(self) -> None:
        if self.rpc_env is not None and any(
                service.program is not None for service in self.services.values()):
            self.request_snapshot()

    def request_hand_over(self) -> None:
        """SIGUSR2: leave the session to the next listener — only if it can take it,
        and only with every drain on disk (the successor starts from the file).
        The state directory is looked at off the loop; the rest once that is back."""
        if self.handing_over:
            return
        if self._hand_over_look is not None:
            log.info("SIGUSR2: still looking at the state directory for the one before; "
                     "its answer goes for this one too")
            return
        if self._hung_look is not None:
            # Not one more thread stuck on the same mount.
            self._refuse_hand_over("the state directory has still not answered the look "
                                   "of an earlier SIGUSR2")
            return
        self._hand_over_looks += 1
        look = self._hand_over_looks
        self._hand_over_look = look
        self._hand_over_timer = self.loop.call_later(
            HAND_OVER_LOOK_TIMEOUT, lambda: self._hand_over_look_timed_out(look))
        offload(self.loop, self.registry.state_directory_problem,
                lambda problem, error: self._hand_over_looked(look, problem, error),
                "handoff-check")

    def _hand_over_looked(self, look: int, problem: str | None,
                          error: BaseException | None) -> None:
        if error is not None:
            raise error  # a bug of ours, late or not: what the directory says is ``problem``
        if look == self._hung_look:
            self._hung_look = None  # answered at last: too late to count
        if look != self._hand_over_look:
            return
        self._hand_over_look = None
        self._hand_over_timer.cancel()
        if problem is None:
            problem = self.registry.hand_over_problem()
        if problem is None:
            problem = self.drains.hand_over_problem()
        if problem is not None:
            self._refuse_hand_over(problem)
            return
        self.handing_over = True
        self.loop.stop()

    def _hand_over_look_timed_out(self, look: int) -> None:
        if look != self._hand_over_look:
            return
        self._hand_over_look = None
        self._hung_look = look
        self._refuse_hand_over(f"the state directory did not answer within "
                               f"{HAND_OVER_LOOK_TIMEOUT:g}s")

    def _refuse_hand_over(self, why: str) -> None:
        log.error("SIGUSR2: cannot hand over (%s); still running, nothing changed", why)
        self.handoff_refused = {"at": time.time(), "why": why}
        self.status.changed()

    def stop(self, hand_over: bool = False) -> bool:
        """Stop; with ``hand_over`` leave the ZooKeeper session and its nodes to a
        successor.  Returns whether they were left to it."""
        self.pids.stop()
        self.checks.stop(CHECKS_STOP_TIMEOUT)
        handed = False
        if hand_over:
            problem = self.registry.hand_over()
            handed = problem is None
            if not handed:
                log.error("hand-over failed (%s); closing the session instead: the "
                          "successor registers every node again", problem)
        if not handed:
            self.registry.stop(REGISTRY_STOP_TIMEOUT)
        self.status.stop()
        return handed

    # -- inputs -------------------------------------------------------------

    def handle_event(self, headers: dict[str, str], payload: str) -> None:
        """One supervisord event; in-memory only.  Input we cannot use is dropped."""
        event = headers.get("eventname", "")
        if event.startswith(PROCESS_STATE_PREFIX):
            change = parse_process_state(event, payload)
            if change is None:
                self.drops.drop("process-state", f"{event} without the fields we need: "
                                f"{excerpt(payload)}")
                return
            key = (change.group, change.name)
            if self._stale(key, change.from_state):
                log.debug("%s:%s %s from %s is older than what we know; ignored", *key,
                          event, change.from_state)
                return
            self._event_seq += 1
            self._process_seq[key] = self._event_seq
            self.process_state(*key, change.state, change.pid)
        elif event == "REMOTE_COMMUNICATION":
            self.drains.handle_event(payload)
        # TICK_* and anything else: the pump after this starts due checks.

    def _stale(self, key: tuple[str, str], from_state: str | None) -> bool:
        """Whether an event predates what we know (supervisord queued it before
        the XML-RPC snapshot we already applied).

        A RUNNING process can only leave RUNNING: while the pid we saw RUNNING
        is alive, an event that does not start from RUNNING cannot be news.
        """
        known = self.health.processes.get(key)
        return (known is not None and known.state == RUNNING and known.pid > 0
                and from_state is not None and from_state != RUNNING
                and process_alive(known.pid))

    def process_state(self, group: str, name: str, state: str, pid: int) -> None:
        """A process's state, from an event or from supervisord's XML-RPC snapshot."""
        bound = self.health.process_state(group, name, state, pid, self.loop.clock())
        if bound:
            if state == RUNNING and pid:
                self.pids.watch(group, name, pid)
            else:
                self.pids.forget(group, name)
            self._dirty.update(bound)

    def _on_process_died(self, group: str, name: str, pid: int) -> None:
        self._event_seq += 1
        self._process_seq[(group, name)] = self._event_seq
        bound = self.health.process_died(group, name, pid, self.loop.clock())
        if bound:
            log.info("%s:%s (pid %d) died", group, name, pid)
            self._dirty.update(bound)

    def _on_check_result(self, run: CheckRun, outcome: CheckOutcome | None) -> None:
        if outcome is None:
            # A killed or abandoned run was reaped: the section may run again.
            self.health.reschedule(run.section)
            return
        section = self.health.sections.get(run.section)
        before = section.last_result if section else None
        was_up = section.up if section else None
        if not self.health.check_result(run.section, run.token, outcome.passed,
                                        self.loop.clock()):
            return  # the section was reset or reloaded while it ran
        self._last_checks[run.section] = (time.time(), outcome)
        if before is not outcome.passed:
            if outcome.passed and section.up != was_up:
                # Said by "healthy: registering" if this pass registers the
                # section (one line, not two, for each of a thousand sections
                # at start-up), else on its own once the pass has synced it.
                self._passes_to_log.add(run.section)
            elif outcome.passed:
                log.info("[%s] check passed", run.section)
            else:
                log.warning("[%s] check failed: %s", run.section, outcome.describe())
                tail = outcome.output.strip()
                if "\n" in tail:  # more than the line above says: the whole tail
                    log.warning("[%s] check output (last %d bytes):\n%s", run.section,
                                OUTPUT_TAIL_BYTES, tail)
            self.status.changed()
        if section.up != was_up:  # most results leave the node as it is: nothing to sync
            self._dirty.add(run.section)

    # -- after every pass of the loop ---------------------------------------

    def pump(self) -> None:
        """Apply what the inputs of this pass changed: nodes, checks, timers."""
        for name in self.health.take_cancelled():
            self.checks.cancel(name)
        if self._dirty:
            dirty, self._dirty = self._dirty, set()
            changes = self._sync_registrations(dirty)
            for name in sorted(self._passes_to_log):  # those that did not register
                log.info("[%s] check passed", name)
            self._passes_to_log.clear()
            if changes:
                self.registry.update(changes)
                self.status.changed()
        if self._settle_pending:
            self._settle_pending = False
            self.registry.settled({posixpath.dirname(service.registration_key)
                                   for service in self.services.values()})
        now = self.loop.clock()
        due = self.health.next_due()
        if due is not None and due <= now:
            runs = self.health.due_checks(now, self.checks.busy_sections())
            if runs:
                self.checks.submit(runs)
            due = self.health.next_due()
        self._arm_check_timer(due)

    def _arm_check_timer(self, when: float | None) -> None:
        """Wake the loop when the next check falls due, between supervisord's ticks."""
        timer = self._check_timer
        if timer is not None and not timer.cancelled and timer.when == when:
            return
        if timer is not None:
            timer.cancel()
        self._check_timer = None if when is None else self.loop.call_at(when, _wake_only)

    def _sync_registrations(self, names: set[str]) -> dict[str, bytes | None]:
        """Bring the registrations of ``names`` in line with their health.

        Returns the znode changes for the registry: each touched path with the
        data it must hold now, or None.  Decided per path from the final state,
        so a node handed from one section to another (a renamed section) is
        never deleted on the way.
        """
        previous = {reg.path: reg for name in names
                    if (reg := self._registrations.get(name)) is not None}
        touched: set[str] = set(previous)
        for name in sorted(names):
            path = self._sync_section(name, previous)
            if path is not None:
                touched.add(path)
        changes: dict[str, bytes | None] = {}
        for path in sorted(touched):
            holder = self._holder.get(path)
            data = self._registrations[holder].data if holder is not None else None
            if self._wanted.get(path) != data:
                changes[path] = data
                if data is None:
                    del self._wanted[path]
                else:
                    self._wanted[path] = data
        return changes

    def _sync_section(self, name: str, previous: dict[str, Registration]) -> str | None:
        """Update one section's registration; returns the path it now wants, if any."""
        current = self._registrations.get(name)
        service = self.services.get(name)
        section = self.health.sections.get(name)
        drained = self.drains.is_drained(name)
        if section is None or not section.up or drained:
            if current is not None:
                del self._registrations[name]
                if self._holder.get(current.path) == name:
                    del self._holder[current.path]
                why = "removed from the config" if service is None else \
                    "drained" if drained else "unhealthy"
                log.info("[%s] %s: deregistering %s", name, why,
                         self.registry.node_of(current.path) or current.service.display_path)
            return None
        if current is not None and current.service is service:
            return current.path  # up before, up now, same settings
        path = service.registration_key
        # Keep the creation time of the node this one continues (same section,
        # or another section handing the same path over).
        continued = current if current is not None else previous.get(path)
        created = continued.created if continued is not None else time.time()
        registration = Registration(service, path, created,
                                    node_payload(service, os.getpid(), created))
        self._registrations[name] = registration
        if current is not None and current.path != path and \
                self._holder.get(current.path) == name:
            del self._holder[current.path]
        self._holder[path] = name
        if current is None:
            self._passes_to_log.discard(name)
            log.info("[%s] healthy: registering %s", name, service.display_path)
        return path

    # -- reload ---------------------------------------------------------------

    def request_reload(self) -> None:
        """SIGHUP: read the config off the loop; the newest request wins."""
        self._reload.request()

    def _read_reload(self) -> None:
        filename, hosts = self.config.filename, self.hosts_override
        running = dict(self.services)
        offload(self.loop, lambda: read_reloaded_config(filename, hosts, running),
                self._reload_read, name="reload")

    def _reload_read(self, read: tuple[Config, list[str]] | None,
                     error: BaseException | None) -> None:
        if self._reload.done():
            return  # another HUP came while reading: that file may be newer than ours
        if isinstance(error, ConfigError):
            log.error("reload rejected, keeping the running config: %s", error)
            return
        if error is not None:
            raise error
        config, warnings = read
        for warning in [*config.warnings, *warnings]:
            log.warning("%s", warning)
        self.reload(config)

    def reload(self, config: Config) -> None:
        """Switch to a new config: unchanged sections keep their nodes untouched,
        changed ones are updated in place or moved, removed ones deregistered."""
        if config.zookeeper != self.config.zookeeper:
            log.warning("reload: [zkwatcher]/[auth] changes need a restart (zkwatcher-"
                        "supervisor handoff); keeping %s", self.config.zookeeper.hosts)
            config = replace(config, zookeeper=self.config.zookeeper)
        for key in ("status_file", "metrics_port"):
            if getattr(config, key) != getattr(self.config, key):
                log.warning("reload: a [zkwatcher] %s change needs a restart (zkwatcher-"
                            "supervisor handoff); keeping %s", key,
                            getattr(self.config, key) or "the default")
                config = replace(config, **{key: getattr(self.config, key)})
        old_sections = dict(self.health.sections)
        self.config = config
        self.services = {service.name: service for service in config.services}
        self.health.reconfigure(config.services, self.loop.clock())
        for name, section in old_sections.items():
            if self.health.sections.get(name) is not section:
                self.checks.cancel(name)  # its result would describe another check
                self._last_checks.pop(name, None)
        self.drains.reloaded(self.services)  # a removed section's drain goes with it
        self._dirty.update(old_sections)
        self._dirty.update(self.services)
        log.info("reloaded %s: %d section(s)", config.filename, len(config.services))
        self._snapshot_if_bound()  # new sections start from the processes' current states
        self.status.changed()

    # -- supervisord's XML-RPC snapshot ---------------------------------------

    def request_snapshot(self) -> None:
        """Ask supervisord for every process's state, off the loop."""
        self._snapshot.request()

    def _fetch_snapshot(self) -> None:
        self._snapshot_request += 1
        request, since = self._snapshot_request, self._event_seq
        env = self.rpc_env

        def fetch() -> list:
            # Imported only by a config with program-bound sections: it brings
            # xmlrpc, http.client and email (see protocol.READY).
            from supervisor import childutils

            return childutils.getRPCInterface(env).supervisor.getAllProcessInfo()

        offload(self.loop, fetch,
                lambda infos, error: self._snapshot_done(request, since, infos, error),
                name="xmlrpc")
        self.loop.call_later(RPC_TIMEOUT, lambda: self._snapshot_late(request))

    def _snapshot_late(self, request: int) -> None:
        if self._snapshot.busy and request == self._snapshot_request:
            # A hung call must not block every later snapshot: ask again (a
            # late answer to this one is still applied if nothing newer was).
            log.warning("supervisord has not answered XML-RPC in %.0fs; going on with "
                        "events, asking again", RPC_TIMEOUT)
            self._snapshot.release()
            self._snapshot_answered = True
            self._retry_snapshot()

    def _retry_snapshot(self) -> None:
        self._snapshot_failures += 1
        delay = backoff(self._snapshot_failures, RPC_TIMEOUT, 60.0)
        self.loop.call_later(delay, self.request_snapshot)

    def _snapshot_done(self, request: int, since: int, infos: list | None,
                       error: BaseException | None) -> None:
        if request == self._snapshot_request:
            self._snapshot.release()
            self._snapshot_answered = True
        if isinstance(error, ImportError):
            raise error  # a broken install, not supervisord: end, as at start
        if error is not None:
            if request == self._snapshot_request:
                log.warning("cannot read process states from supervisord (%r); going on "
                            "with events, asking again", error)
                self._retry_snapshot()
        elif request > self._snapshot_applied:
            self._snapshot_failures = 0
            self._snapshot_applied = request
            for info in infos:
                key = (info["group"], info["name"])
                # An event seen after we asked is newer than this answer.
                if self._process_seq.get(key, 0) <= since:
                    self.process_state(*key, info["statename"], info.get("pid", 0))
            for service in self.health.unmatched_programs():
                log.warning("[%s] program %s matches no supervisord process; section stays "
                            "down", service.name, service.program)
        self._snapshot.rerun_if_asked()

    # -- status ---------------------------------------------------------------

    def snapshot(self) -> dict:
        """Everything ``status`` and the metrics show, as plain JSON-able data."""
        registered = self.registry.registered()
        now, wall = self.loop.clock(), time.time()
        sections = {}
        for name, section in self.health.sections.items():
            service = section.service
            check = None
            if service.cmd is not None:
                last_run, outcome = self._last_checks.get(name, (None, None))
                due_at = section.result_due_at()
                due_by = None if due_at is None else wall + (due_at - now)
                check = {
                    "last_result": section.last_result, "last_run": last_run,
                    "duration": outcome.duration if outcome else None,
                    "detail": outcome.describe() if outcome else None,
                    "passes": section.passes, "failures": section.failures,
                    "rise": service.rise, "fall": service.fall,
                    "due_by": due_by,
                }
            drain_entry = self.drains.entry(name)
            sections[name] = {
                "path": self.registry.node_of(service.registration_key) or service.display_path,
                "healthy": section.up,
                "registered": service.registration_key in registered,
                "processes": {f"{g}:{n}": p.state for (g, n), p in section.processes.items()},
                "check": check,
                "drained": None if drain_entry is None else asdict(drain_entry),
            }
        session_id = self.registry.session_id
        return {
            "pid": os.getpid(),
            "updated": wall,
            "config": self.config_key,
            "zookeeper": {"hosts": self.config.zookeeper.hosts,
                          "tls": self.config.zookeeper.tls is not None,
                          "connected": self.registry.connected,
                          "problem": self.registry.problem,
                          "connects": self.registry.connects,
                          "session": None if session_id is None else f"0x{session_id:x}"},
            "handoff_refused": self.handoff_refused,
            "dropped_input": self.drops.dropped,
            "counters": {"registrations": self.registry.registrations,
                         "deregistrations": self.registry.deregistrations},
            "sections": sections,
            "requests": self.drains.acknowledgements(registered, self.registry.connected),
        }


def read_reloaded_config(filename: str, hosts_override: str | None,
                         running: dict[str, ServiceSettings]) -> tuple[Config, list[str]]:
    """Read the config again (off the loop), refusing what this listener could not
    run; also returns the warnings for sections whose checks run as root anew."""
    config = load_config(filename, hosts_override=hosts_override)
    error = switch_error(config, os.geteuid(), os.getegid())
    if error is not None:
        raise error
    import_for(config.services)
    warnings = []
    if os.geteuid() == 0:
        changed = [service for service in config.services
                   if (old := running.get(service.name)) is None
                   or (old.cmd, identity_of(old.user), old.environment)
                   != (service.cmd, identity_of(service.user), service.environment)]
        warnings = root_warnings(changed)
    return config, warnings


def _wake_only() -> None:
    """A timer whose only job is to end the loop's wait; the pump does the work."""


def _exit_on_thread_crash(loop: EventLoop) -> None:
    """Crash-only: a thread of ours that dies takes the listener down with it."""
    def hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        log.critical("thread %s failed", args.thread.name if args.thread else "?",
                     exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
        loop.fail(args.exc_value)

    threading.excepthook = hook


def run(config: Config, hosts_override: str | None = None,
        stdin: BinaryIO | None = None, stdout: TextIO | None = None,
        start_drained: bool = False) -> int:
    """Run the listener until supervisord stops it; returns the exit status.
    ``start_drained``: every section is ``start_drained`` (``run --drained``)."""
    if stdout is None:
        stdout = claim_stdout()
    if stdin is None:
        stdin = sys.stdin.buffer
    close_inherited_fds_on_exec()
    import_for(config.services)
    loop = EventLoop()
    stopping: list[str] = []
    controllers: list[Controller] = []  # set below; a HUP before then has nothing to reload

    def on_signal(signum: int, frame) -> None:
        # Runs between two bytecodes of the loop: only hand the signal over.
        if signum == signal.SIGHUP:
            if controllers:
                loop.post(controllers[0].request_reload)
        elif signum == signal.SIGUSR2 and controllers:
            loop.post(controllers[0].request_hand_over)
        else:
            stopping.append(signal.Signals(signum).name)
            loop.stop()

    # First of all, so no signal we handle can take its default action (death).
    for signum in HANDLED_SIGNALS:
        signal.signal(signum, on_signal)
    signal.set_wakeup_fd(loop.wakeup_fd, warn_on_full_buffer=False)
    session = SessionStore(statedir.state_path(config.filename, "session"),
                           legacy=statedir.legacy_paths(config.filename, "session"),
                           on_fatal=loop.fail)
    registry = Registry(config.zookeeper, session)
    controller = Controller(config, registry, loop, hosts_override,
                            drain_path=drain.state_path(config.filename),
                            start_drained=start_drained)
    controllers.append(controller)
    _exit_on_thread_crash(loop)
    if config.metrics_port:
        from . import metrics

        try:
            metrics.serve(config.metrics_port, lambda: controller.status.latest)
        except OSError as exc:
            log.error("metrics_port %d: %s; running without metrics", config.metrics_port, exc)

    protocol = SupervisorChannel(loop, stdin, stdout, controller.handle_event, loop.stop,
                                 controller.drops)
    status = 0
    try:
        log.info("watching %d section(s), ZooKeeper at %s",
                 len(config.services), config.zookeeper.hosts)
        if "SUPERVISOR_SERVER_URL" in os.environ:
            controller.rpc_env = dict(os.environ)
        elif any(service.program is not None for service in config.services):
            log.warning("SUPERVISOR_SERVER_URL is not set: no XML-RPC access to "
                        "supervisord; waiting for PROCESS_STATE events")
        controller.start()
        protocol.start()
        loop.run()
        if stopping:
            log.info("%s received", stopping[0])
        elif controller.handing_over:
            log.info("SIGUSR2 received; handing over to the next listener")
    except Exception:
        log.critical("unexpected error; exiting so that supervisord restarts us",
                     exc_info=True)
        status = EXIT_CRASH
    finally:
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        # Not after a failure: a listener with a bug closes its session.
        hand_over = (status == 0 and not stopping and controller.handing_over
                     and loop.failure is None)
        handed = controller.stop(hand_over=hand_over)
        if hand_over:
            # Not 0 either way: supervisord must start the successor.
            status = EXIT_HANDED_OVER if handed else EXIT_CRASH
        if loop.failure is not None and status != EXIT_CRASH:
            # A thread that failed while we shut down (logged where it failed).
            log.critical("a thread failed while stopping (%r); exiting %d",
                         loop.failure, EXIT_CRASH)
            status = EXIT_CRASH
        log.info("stopped")
    return status
