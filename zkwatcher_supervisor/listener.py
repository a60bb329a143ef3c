"""The supervisord event listener: protocol loop, signals and wiring.

The loop reads one event, feeds it to the health state machine, hands any due
checks to the check runner and the wanted node set to the registry — each a
queue push — and answers at once.  Nothing on that path waits for a check or
for ZooKeeper, so supervisord never sees us BUSY for long and never overflows
our event buffer.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO, Callable, TextIO

from supervisor import childutils

from .checks import CheckOutcome, CheckRunner
from .config import Config, ConfigError, ServiceSettings, load_config
from .health import RUNNING, CheckRun, Health
from .payload import node_payload
from .pidwatch import PidWatcher
from .registry import Registry
from .status import StatusFileWriter

log = logging.getLogger(__name__)

PROCESS_STATE_PREFIX = "PROCESS_STATE_"
# How long to wait for supervisord's XML-RPC answer before going on with events alone.
RPC_TIMEOUT = 5.0


class Shutdown(Exception):
    """Raised from the SIGTERM/SIGINT handler to leave the protocol loop."""


@dataclass(frozen=True)
class Registration:
    """A node we want while its section is up."""

    service: ServiceSettings  # the settings it was built from
    path: str
    created: float
    data: bytes


class Watcher:
    """Turns supervisord events and check results into the set of registered znodes."""

    def __init__(self, config: Config, registry: Registry,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self.registry = registry
        self.services = {service.name: service for service in config.services}
        self.health = Health(config.services)
        self.checks = CheckRunner(self._on_check_result)
        self.pids = PidWatcher(self._on_process_died)
        # Health is touched by the protocol loop and the check runner's thread;
        # everything done under this lock is in-memory and quick.
        self._lock = threading.Lock()
        self._registrations: dict[str, Registration] = {}  # by section, while up
        self._last_checks: dict[str, tuple[float, CheckOutcome]] = {}  # wall time, outcome
        self.rpc = None  # supervisord's XML-RPC interface, when we have one
        self.status = StatusFileWriter(config.status_file, self.snapshot)
        registry.on_change = self.status.changed

    def start(self) -> None:
        self.registry.start()
        self.checks.start()
        self.pids.start()
        self.status.start()
        self._update()

    def stop(self) -> None:
        self.pids.stop()
        self.checks.stop()
        self.registry.stop()
        self.status.stop()

    def snapshot(self) -> dict:
        """Everything ``status`` and the metrics show, as plain JSON-able data."""
        registered = self.registry.registered()
        with self._lock:
            sections = {}
            for name, section in self.health.sections.items():
                service = section.service
                check = None
                if service.cmd is not None:
                    last_run, outcome = self._last_checks.get(name, (None, None))
                    check = {
                        "last_result": section.last_result, "last_run": last_run,
                        "duration": outcome.duration if outcome else None,
                        "detail": outcome.describe() if outcome else None,
                        "passes": section.passes, "failures": section.failures,
                        "rise": service.rise, "fall": service.fall,
                    }
                sections[name] = {
                    "path": service.node_path,
                    "healthy": section.up,
                    "registered": service.node_path in registered,
                    "processes": {f"{g}:{n}": p.state for (g, n), p in section.processes.items()},
                    "check": check,
                }
        return {
            "pid": os.getpid(),
            "updated": time.time(),
            "config": self.config.filename,
            "zookeeper": {"hosts": self.config.zookeeper.hosts,
                          "connected": self.registry.connected,
                          "connects": self.registry.connects},
            "counters": {"registrations": self.registry.registrations,
                         "deregistrations": self.registry.deregistrations},
            "sections": sections,
        }

    def process_state(self, group: str, name: str, state: str, pid: int) -> None:
        """A process's state, from an event or from supervisord's XML-RPC snapshot."""
        with self._lock:
            bound = self.health.process_state(group, name, state, pid, self._clock())
        if bound:
            if state == RUNNING and pid:
                self.pids.watch(group, name, pid)
            else:
                self.pids.forget(group, name)
            self._update(bound)  # entering RUNNING may make a check due

    def handle_event(self, headers: dict[str, str], payload: str) -> None:
        """One supervisord event; quick and non-blocking."""
        event = headers.get("eventname", "")
        if event.startswith(PROCESS_STATE_PREFIX):
            fields = childutils.get_headers(payload.split("\n", 1)[0])
            self.process_state(
                fields.get("groupname", ""), fields.get("processname", ""),
                event[len(PROCESS_STATE_PREFIX):], int(fields.get("pid", "0") or 0),
            )
        else:
            self._update(())  # TICK_* and anything else: just start due checks

    def _on_process_died(self, group: str, name: str, pid: int) -> None:
        with self._lock:
            bound = self.health.process_died(group, name, pid, self._clock())
        if bound:
            log.info("%s:%s (pid %d) died", group, name, pid)
            self._update(bound, schedule=False)

    def _on_check_result(self, run: CheckRun, outcome: CheckOutcome) -> None:
        with self._lock:
            section = self.health.sections.get(run.section)
            before = section.last_result if section else None
            self.health.check_result(run.section, run.token, outcome.passed)
            self._last_checks[run.section] = (time.time(), outcome)
        if before is not outcome.passed:
            if outcome.passed:
                log.info("[%s] check passed", run.section)
            else:
                log.warning("[%s] check failed: %s", run.section, outcome.describe())
        # The section's next run is due at a later tick: no need to look for due checks.
        self._update((run.section,), schedule=False)

    def _update(self, sections: Iterable[str] | None = None, schedule: bool = True) -> None:
        """Start due checks and bring the registrations of ``sections`` (all if None)
        in line with their health; each call costs only the sections it names."""
        with self._lock:
            runs = self.health.due_checks(self._clock()) if schedule else []
            names = set(self.services) | set(self._registrations) if sections is None \
                else sections
            changes: dict[str, bytes | None] = {}
            for name in names:
                changes.update(self._sync_registration(name))
        self.checks.submit(runs)
        if changes:
            self.registry.update(changes)
        self.status.changed()

    def _sync_registration(self, name: str) -> dict[str, bytes | None]:
        """The node changes that make section ``name``'s registration match its health."""
        current = self._registrations.get(name)
        service = self.services.get(name)
        section = self.health.sections.get(name)
        if section is None or not section.up:
            if current is None:
                return {}
            del self._registrations[name]
            why = "removed from the config" if service is None else "unhealthy"
            log.info("[%s] %s: deregistering %s", name, why, current.path)
            return {current.path: None}
        if current is not None and current.service is service:
            return {}  # up before, up now, same settings: nothing to write
        created = current.created if current else time.time()
        registration = Registration(service, service.node_path, created,
                                    node_payload(service, os.getpid(), created))
        self._registrations[name] = registration
        changes: dict[str, bytes | None] = {registration.path: registration.data}
        if current is None:
            log.info("[%s] healthy: registering %s", name, registration.path)
        elif current.path != registration.path:
            changes[current.path] = None
        return changes

    def reload(self, config: Config) -> None:
        """Switch to a new config: unchanged sections keep their nodes untouched,
        changed ones are updated in place or moved, removed ones deregistered."""
        if config.zookeeper != self.config.zookeeper:
            log.warning("reload: [zkwatcher]/[auth] changes need a restart; keeping %s",
                        self.config.zookeeper.hosts)
        with self._lock:
            self.config = config
            self.services = {service.name: service for service in config.services}
            self.health.reconfigure(config.services, self._clock())
        log.info("reloaded %s: %d section(s)", config.filename, len(config.services))
        if self.rpc is not None:
            self.load_process_states(self.rpc)  # also refreshes the pids we watch
        self._update()

    def load_process_states(self, rpc) -> bool:
        """Seed process states from supervisord over XML-RPC; False if it did not answer."""
        result: list = []

        def fetch() -> None:
            try:
                result.append(rpc.supervisor.getAllProcessInfo())
            except Exception as exc:
                result.append(exc)

        fetcher = threading.Thread(target=fetch, name="rpc", daemon=True)
        fetcher.start()
        fetcher.join(RPC_TIMEOUT)
        self.rpc = rpc
        if not result or isinstance(result[0], Exception):
            reason = "no answer" if not result else repr(result[0])
            log.warning("cannot read process states from supervisord (%s); waiting for events",
                        reason)
            return False
        for info in result[0]:
            self.process_state(info["group"], info["name"], info["statename"], info.get("pid", 0))
        for service in self.health.unmatched_programs():
            log.warning("[%s] program %s matches no supervisord process; section stays down",
                        service.name, service.program)
        return True


def serve(stdin: BinaryIO, stdout: TextIO, watcher: Watcher) -> None:
    """The supervisord listener protocol, until EOF on stdin."""
    while True:
        childutils.listener.ready(stdout)
        line = stdin.readline()
        if not line:
            log.info("stdin closed: supervisord is gone")
            return
        headers = childutils.get_headers(line.decode("utf-8"))
        payload = stdin.read(int(headers.get("len", 0))).decode("utf-8", "replace")
        try:
            watcher.handle_event(headers, payload)
        except Exception:
            # A bug must not wedge supervisord's event pool: log it and answer.
            log.exception("handling %s failed", headers.get("eventname"))
        childutils.listener.ok(stdout)


def _raise_shutdown(signum: int, frame) -> None:
    raise Shutdown(signal.Signals(signum).name)


def claim_stdout() -> TextIO:
    """Take fd 1 for the protocol and point fd 1 at stderr for everything else.

    A stray print, a library warning or a child process that inherits fd 1 then
    lands in the log instead of corrupting the protocol ("bad result line").
    """
    protocol = os.fdopen(os.dup(1), "w", encoding="utf-8", closefd=True)
    os.set_inheritable(protocol.fileno(), False)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return protocol


def reload_from_disk(watcher: Watcher, hosts_override: str | None) -> None:
    """Re-read the config file; a broken one is rejected and the running config stays."""
    try:
        config = load_config(watcher.config.filename, hosts_override=hosts_override)
    except ConfigError as exc:
        log.error("reload rejected, keeping the running config: %s", exc)
        return
    for warning in config.warnings:
        log.warning("%s", warning)
    watcher.reload(config)


def run(config: Config, hosts_override: str | None = None,
        stdin: BinaryIO | None = None, stdout: TextIO | None = None) -> int:
    """Run the listener until supervisord stops it; returns the exit status."""
    if stdout is None:
        stdout = claim_stdout()
    if stdin is None:
        stdin = sys.stdin.buffer
    watcher = Watcher(config, Registry(config.zookeeper))
    if config.metrics_port:
        from . import metrics

        try:
            metrics.serve(config.metrics_port, watcher.snapshot)
        except OSError as exc:
            log.error("metrics_port %d: %s; running without metrics", config.metrics_port, exc)
    signal.signal(signal.SIGTERM, _raise_shutdown)
    signal.signal(signal.SIGINT, _raise_shutdown)
    # Reload on its own thread: the handler may interrupt the protocol loop
    # while it holds the watcher's lock.
    signal.signal(signal.SIGHUP, lambda signum, frame: threading.Thread(
        target=reload_from_disk, args=(watcher, hosts_override), name="reload", daemon=True,
    ).start())
    try:
        log.info("watching %d section(s), ZooKeeper at %s",
                 len(config.services), config.zookeeper.hosts)
        if any(service.program is not None for service in config.services):
            try:
                rpc = childutils.getRPCInterface(os.environ)
            except KeyError:
                log.warning("SUPERVISOR_SERVER_URL is not set: no XML-RPC access to "
                            "supervisord; waiting for PROCESS_STATE events")
            else:
                watcher.load_process_states(rpc)
        watcher.start()
        serve(stdin, stdout, watcher)
    except Shutdown as exc:
        log.info("%s received", exc)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        watcher.stop()
        log.info("stopped")
    return 0
