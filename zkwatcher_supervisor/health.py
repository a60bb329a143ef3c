"""The health state machine: events and check results in, desired up/down out.

Pure logic — no threads, no I/O, no clock of its own (callers pass ``now``) —
so every rule below can be unit- and property-tested directly.

A section is up when its process part and its check part both hold:

* process part (only if ``program`` is set): at least one supervisord process
  matches and every matched process is RUNNING;
* check part (only if ``cmd`` is set): starts down, goes up after ``rise``
  consecutive passes and down after ``fall`` consecutive failures.  While the
  process part is down no check runs and the check part is held down; when the
  process part comes up the check is due at once.

Checks are due every ``refresh`` seconds (at least 1); the caller starts them
from its own timer (:meth:`Health.next_due`) as well as on supervisord's ticks.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from .config import ServiceSettings
from .privilege import CheckUser, identity_of

RUNNING = "RUNNING"

# zk_watcher's ``refresh: 0`` meant "as often as its 1 s poll"; no check runs more often.
MIN_REFRESH = 1.0
# A check with no result for refresh + this + its timeout is overdue: the
# runner is stuck, and ``status`` says so.
OVERDUE_GRACE = 5.0


@dataclass(frozen=True)
class CheckRun:
    """A check the caller should start; hand ``token`` back with its result."""

    section: str
    command: str
    timeout: float
    token: int
    expect_status: int | None = None  # http:// checks only
    user: CheckUser | None = None  # who runs the command; None: the listener's user
    # The command's environment; None: the listener's, without supervisord's variables.
    env: dict[str, str] | None = field(default=None, compare=False, repr=False)


@dataclass
class ProcessInfo:
    state: str
    pid: int = 0


class SectionHealth:
    # Slots: one of these per section, and a host may have thousands.
    __slots__ = ("cancelled", "check_up", "failures", "last_progress", "last_result",
                 "next_check_at", "passes", "processes", "running_token", "service")

    def __init__(self, service: ServiceSettings, now: float = 0.0) -> None:
        self.service = service
        self.processes: dict[tuple[str, str], ProcessInfo] = {}
        self.check_up = False
        self.passes = 0  # consecutive, since the last failure
        self.failures = 0  # consecutive, since the last pass
        self.last_result: bool | None = None
        self.next_check_at = 0.0  # due at once
        # The run whose result counts; cleared on reset, so the result of a run
        # that began before the reset is dropped.
        self.running_token: int | None = None
        self.cancelled = False  # a reset abandoned a running check
        # When the check part last moved (a result, a reset): a basis for "overdue".
        self.last_progress = now

    @property
    def process_up(self) -> bool:
        if self.service.program is None:
            return True
        return bool(self.processes) and all(p.state == RUNNING for p in self.processes.values())

    @property
    def up(self) -> bool:
        if not self.process_up:
            return False
        return self.check_up if self.service.cmd is not None else True

    @property
    def refresh(self) -> float:
        return max(MIN_REFRESH, self.service.refresh)

    def reset_check(self, now: float) -> None:
        self.check_up = False
        self.passes = self.failures = 0
        if self.running_token is not None:
            self.cancelled = True
        self.running_token = None
        self.next_check_at = now
        self.last_progress = now

    def result_due_at(self) -> float | None:
        """By when the next check result must arrive, or None if none is expected."""
        if self.service.cmd is None or not self.process_up:
            return None
        return self.last_progress + self.refresh + OVERDUE_GRACE + self.service.timeout

    def overdue(self, now: float) -> bool:
        """Whether a check result should have arrived by ``now`` and has not."""
        due = self.result_due_at()
        return due is not None and now > due

    def set_process(self, key: tuple[str, str], state: str, pid: int, now: float) -> None:
        was_up = self.process_up
        self.processes[key] = ProcessInfo(state, pid if state == RUNNING else 0)
        if was_up != self.process_up:
            self.reset_check(now)

    def check_due(self, now: float) -> bool:
        return (
            self.service.cmd is not None
            and self.process_up
            and self.running_token is None
            and now >= self.next_check_at
        )

    def record_result(self, passed: bool, now: float) -> None:
        self.last_result = passed
        self.last_progress = now
        if passed:
            self.passes += 1
            self.failures = 0
            if self.passes >= self.service.rise:
                self.check_up = True
        else:
            self.failures += 1
            self.passes = 0
            if self.failures >= self.service.fall:
                self.check_up = False


class Health:
    """Health of every configured section."""

    def __init__(self, services: Iterable[ServiceSettings], now: float = 0.0) -> None:
        self.sections = {service.name: SectionHealth(service, now) for service in services}
        # Every supervisord process seen so far, so sections added by a reload
        # start from the processes' current states.
        self.processes: dict[tuple[str, str], ProcessInfo] = {}
        self._next_token = 1
        # (next_check_at, section) for sections that may need a run: finding
        # due checks costs O(log n) per run, not a scan of every section.
        # Entries go stale freely; they are checked when they reach the top.
        self._schedule: list[tuple[float, str]] = []
        self._cancelled: set[str] = set()  # see take_cancelled
        for name in self.sections:
            self.reschedule(name)

    def reschedule(self, name: str) -> None:
        """Look at section ``name`` again for a due check (after it changed or was freed)."""
        section = self.sections.get(name)
        if section is not None and section.service.cmd is not None:
            heapq.heappush(self._schedule, (section.next_check_at, name))

    def _current(self, entry: tuple[float, str]) -> bool:
        when, name = entry
        section = self.sections.get(name)
        return (section is not None and section.next_check_at == when
                and section.service.cmd is not None and section.process_up
                and section.running_token is None)

    def reconfigure(self, services: Iterable[ServiceSettings], now: float) -> None:
        """Switch to a new set of sections (a config reload).

        A section whose ``program`` and check (``cmd``, who runs it and its
        ``environment``) are unchanged keeps its process and check state — it does
        not flap — and takes its other settings from the new config.  A new
        section, or one whose ``program`` or check changed, starts afresh:
        process states from what we know, check down and due at once.
        """
        old, self.sections = self.sections, {}
        for service in services:
            section = old.get(service.name)
            if section is not None and _same_check(section.service, service):
                section.service = service
            else:
                section = SectionHealth(service, now)
                section.next_check_at = now
                if service.program is not None:
                    section.processes = {
                        key: ProcessInfo(info.state, info.pid)
                        for key, info in self.processes.items()
                        if service.program.matches(*key)
                    }
            self.sections[service.name] = section
            self.reschedule(service.name)

    def up_sections(self) -> set[str]:
        return {name for name, section in self.sections.items() if section.up}

    def process_state(self, group: str, name: str, state: str, pid: int, now: float) -> list[str]:
        """A supervisord process changed state (from an event or a state snapshot).

        Returns the sections that follow this process.
        """
        self.processes[(group, name)] = ProcessInfo(state, pid if state == RUNNING else 0)
        bound = []
        for section_name, section in self.sections.items():
            program = section.service.program
            if program is not None and program.matches(group, name):
                section.set_process((group, name), state, pid, now)
                bound.append(section_name)
                self._note_reset(section_name, section)
        return bound

    def process_died(self, group: str, name: str, pid: int, now: float) -> list[str]:
        """The process we saw RUNNING with ``pid`` is gone, ahead of supervisord's event.

        Only the pid we recorded counts: a late notice about an older pid of a
        process that has been restarted since must not take the new one down.
        """
        known = self.processes.get((group, name))
        if known is not None and known.state == RUNNING and known.pid == pid:
            self.processes[(group, name)] = ProcessInfo("EXITED")
        affected = []
        for section_name, section in self.sections.items():
            info = section.processes.get((group, name))
            if info is not None and info.state == RUNNING and info.pid == pid:
                section.set_process((group, name), "EXITED", 0, now)
                affected.append(section_name)
                self._note_reset(section_name, section)
        return affected

    def unmatched_programs(self) -> list[ServiceSettings]:
        return [
            s.service
            for s in self.sections.values()
            if s.service.program is not None and not s.processes
        ]

    def take_cancelled(self) -> list[str]:
        """Sections whose running check a reset abandoned since the last call."""
        cancelled, self._cancelled = sorted(self._cancelled), set()
        return cancelled

    def _note_reset(self, name: str, section: SectionHealth) -> None:
        if section.cancelled:
            section.cancelled = False
            self._cancelled.add(name)
        self.reschedule(name)

    def next_due(self) -> float | None:
        """When the earliest check that is not running falls due, or None."""
        while self._schedule and not self._current(self._schedule[0]):
            heapq.heappop(self._schedule)
        return self._schedule[0][0] if self._schedule else None

    def due_checks(self, now: float, busy: Collection[str] = ()) -> list[CheckRun]:
        """Checks to start now; each is marked running until its result comes back.

        ``busy`` sections still have an earlier run's process around (killed
        but not reaped yet): they wait for :meth:`reschedule`, so runs of one
        section never overlap.
        """
        runs = []
        while self._schedule and self._schedule[0][0] <= now:
            entry = heapq.heappop(self._schedule)
            name = entry[1]
            if not self._current(entry) or name in busy:
                continue
            section = self.sections[name]
            token = self._next_token
            self._next_token += 1
            section.running_token = token
            section.next_check_at = now + section.refresh
            service = section.service
            runs.append(CheckRun(name, service.cmd, service.timeout, token,
                                 service.expect_status, service.user, service.check_env))
        return runs

    def check_result(self, section_name: str, token: int, passed: bool,
                     now: float = 0.0) -> bool:
        """Record a result; False if it is stale (the section was reset or
        reloaded while the check ran) and was dropped."""
        section = self.sections.get(section_name)
        if section is None or section.running_token != token:
            return False
        section.running_token = None
        section.record_result(passed, now)
        self.reschedule(section_name)
        return True


def _same_check(old: ServiceSettings, new: ServiceSettings) -> bool:
    """Whether a reloaded section checks the same thing, so its health carries over.

    The check's user counts by who it is, not by its groups and home as looked
    up again: adding the user to a group must not take its nodes down.
    """
    return (old.program == new.program and old.cmd == new.cmd
            and identity_of(old.user) == identity_of(new.user)
            and old.environment == new.environment)
