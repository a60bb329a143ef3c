"""The daemon side of drains: which sections the operator took out, and for how long.

:class:`DrainKeeper` turns the drain requests supervisord relays (REMOTE_COMMUNICATION
events) into drained sections, ends timed drains, keeps the drained set on disk
across restarts and remembers the answers that ``zkwatcher-supervisor drain``
waits for in the status file.  The command side (the request format, the
client, the file format) is :mod:`.drain`.

``start_drained`` (a section's key, or ``run --drained`` for all) drains a
section the listener has never run, reason ``start_drained``, until someone
undrains it.  Every section is either drained or in rotation, and the file
keeps both (the drains, and every section with its node), so an undrain is
remembered as the section being in rotation: it stays so across restarts,
reboots and hand-overs.  A section is new when both its name and its node are
new: renamed, or moved to another port, it is the same section.  A file of an
earlier version names no sections: every section not drained in it was in
rotation, and stays so.

Owned by the controller; every method runs on the event loop's thread.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping

from . import drain, statedir
from .config import ServiceSettings
from .loop import EventLoop, SingleFlight, Timer, offload
from .untrusted import DropLog

log = logging.getLogger(__name__)

# An acknowledgement names at most this many refused sections (it is in the status file).
MAX_REFUSALS_SHOWN = 100
# How many recent answers the status file carries.
MAX_ANSWERS = 50
START_DRAINED = "start_drained"  # the reason of a start drain


def renamed(before: Mapping[str, str], after: Mapping[str, ServiceSettings]
            ) -> dict[str, str]:
    """Sections of ``before`` (name -> node) gone from ``after`` whose node a
    section new to ``after`` took over: old name -> new name."""
    by_node = {service.registration_key: name for name, service in after.items()
               if name not in before}
    return {name: by_node[node] for name, node in before.items()
            if name not in after and node in by_node}


def newcomers(before: Mapping[str, str], after: Mapping[str, ServiceSettings]) -> list[str]:
    """The sections of ``after`` whose name and node are both new to ``before``."""
    nodes = set(before.values())
    return [name for name, service in after.items()
            if name not in before and service.registration_key not in nodes]


class DrainKeeper:
    """The drained sections of one listener, their timers, file and acknowledgements.

    ``changed(name)`` tells the owner a section's drain changed (its registration
    must be brought in line); ``publish()`` asks for the status file to be rewritten.
    """

    def __init__(self, loop: EventLoop, path: str | None, config_filename: str,
                 services: Mapping[str, ServiceSettings], drops: DropLog,
                 changed: Callable[[str], None], publish: Callable[[], None],
                 start_all_drained: bool = False, earlier_version_ran: bool = False) -> None:
        self._loop = loop
        self._path = path
        self._config_key = statedir.config_key(config_filename)
        self._services = services
        self._drops = drops
        self._changed = changed
        self._publish = publish
        self._drained: dict[str, drain.Drain] = {}
        self._timers: dict[str, Timer] = {}
        self._saving = SingleFlight(self._write)
        self._save_error: str | None = None
        self._requests: OrderedDict[str, dict] = OrderedDict()
        self._legacy: str | None = None  # an earlier version's file, once adopted
        self._start_all_drained = start_all_drained
        self._requested: tuple | None = None  # the newest state handed to a save
        saved = drain.nothing_saved()
        if path is not None:
            saved, self._legacy = drain.load_adopting(
                path, statedir.legacy_paths(config_filename, "drained"))
        sections = saved.sections
        found = path is not None and (os.path.lexists(path) or self._legacy is not None)
        if sections is None or (earlier_version_ran and not found):
            # An earlier version's file, or none at all where an earlier
            # version ran (we take over its session): it wrote a file only for
            # a drain, and it ran every section it had.
            sections = {name: service.registration_key for name, service in services.items()}
        moved = renamed(sections, services)
        for name, entry in saved.drains.items():
            if name in services or name in moved:  # a section removed meanwhile drops out
                self._set_drain(moved.get(name, name), entry)
        self._start_drained(newcomers(sections, services))
        if saved.refused:
            # Kept as it is until a drain, an undrain or a reload changes what is
            # drained: fixing its mode or owner before then brings its drains back.
            log.warning("the drain state at %s is ignored (see above) and left in place "
                        "until the next drain or undrain replaces it", path)
            self._requested = (dict(self._drained), self._sections())
            return
        self._requested = (saved.drains, saved.sections)
        self._save(force=self._legacy is not None)

    def is_drained(self, name: str) -> bool:
        return name in self._drained

    def entry(self, name: str) -> drain.Drain | None:
        """The drain of ``name``, or None when it is not drained."""
        return self._drained.get(name)

    def hand_over_problem(self) -> str | None:
        """Why a successor could not start from the file now, or None."""
        if self._path is None:
            return None
        if self._saving.busy:
            return "the drained sections are being saved; try again in a moment"
        if self._save_error is not None:
            return f"the drained sections are not saved ({self._save_error})"
        return None

    def handle_event(self, payload: str) -> None:
        """A REMOTE_COMMUNICATION event's payload; input we cannot use is dropped."""
        try:
            request = drain.parse_event(payload)
        except drain.UnusableRequest as exc:
            self._refuse_request(exc)
            return
        except ValueError as exc:
            self._drops.drop("drain-request", f"ignoring a drain request: {exc}")
            return
        if request is not None:
            self._drain_request(request)

    def reloaded(self, services: Mapping[str, ServiceSettings]) -> None:
        """The config was reloaded: a removed section's drain goes with it, a
        renamed one's moves to its new name, and new sections may start drained."""
        before = self._sections()
        self._services = services
        moved = renamed(before, services)
        for name in [name for name in self._drained if name not in services]:
            entry = self._drained[name]
            self._set_drain(name, None)
            if name in moved:
                self._set_drain(moved[name], entry)
        self._start_drained(newcomers(before, services))
        self._save()  # or a removed drain would come back with its section after a restart

    def _start_drained(self, names: list[str]) -> None:
        """Drain the new sections that start drained."""
        for name in names:
            service = self._services[name]
            if name in self._drained or not (service.start_drained or self._start_all_drained):
                continue
            by = "config" if service.start_drained else "--drained"
            log.info("[%s] new section, start_drained: drained until undrained "
                     "(zkwatcher-supervisor undrain %s)", name, name)
            self._set_drain(name, drain.Drain(START_DRAINED, by, time.time()))

    def acknowledgements(self, registered: frozenset[str],
                         connected: bool) -> dict[str, dict]:
        """Recent drain requests: applied, and (for drains) ZooKeeper confirmed the deletions."""
        answers = {}
        for request_id, entry in self._requests.items():
            if "error" in entry:
                answers[request_id] = entry
                continue
            confirmed = entry["action"] == "undrain" or (
                connected and not any(
                    self._services[name].registration_key in registered
                    for name in entry["sections"] if name in self._services))
            answers[request_id] = {**entry, "confirmed": confirmed}
        return answers

    def _refuse_request(self, error: drain.UnusableRequest) -> None:
        """A request we cannot apply: logged, and answered if it says who is asking."""
        self._drops.drop("drain-request", f"ignoring a drain request: {error}")
        if error.id is not None and error.config == self._config_key:
            # No "accepted": a client of an earlier version would read it as success.
            self._answer(error.id, {"error": str(error)})

    def _answer(self, request_id: str, answer: dict) -> None:
        self._requests[request_id] = answer
        self._requests.move_to_end(request_id)
        while len(self._requests) > MAX_ANSWERS:
            self._requests.popitem(last=False)
        self._publish()

    def _drain_request(self, request: drain.DrainRequest) -> None:
        """A drain/undrain request from ``zkwatcher-supervisor drain`` via supervisord."""
        if request.config != self._config_key:
            return  # meant for another listener of this supervisord
        applied, refused = [], {}
        for name in request.sections:
            if name not in self._services:
                refused[name] = ("not a section of the running config (added to the file "
                                 "but not reloaded? reload first)")
            elif request.action == "drain":
                now = time.time()
                until = now + request.duration if request.duration is not None else None
                entry = drain.Drain(request.reason, request.by, now, until)
                log.info("[%s] drained by %s%s%s", name, request.by,
                         f": {request.reason}" if request.reason else "",
                         f" for {request.duration:.0f}s" if request.duration else "")
                self._set_drain(name, entry, duration=request.duration)
                applied.append(name)
            else:
                if name in self._drained:
                    log.info("[%s] undrained by %s", name, request.by)
                    self._set_drain(name, None)
                applied.append(name)
        shown = dict(list(refused.items())[:MAX_REFUSALS_SHOWN])
        self._answer(request.id, {"action": request.action, "sections": applied,
                                  "applied": applied, "refused": shown,
                                  "refused_more": len(refused) - len(shown),
                                  "accepted": time.time()})
        if applied:
            self._save()

    def _set_drain(self, name: str, entry: drain.Drain | None,
                   duration: float | None = None) -> None:
        """Drain ``name`` (``entry``) or undrain it (None).  The end of a timed drain
        is timed on the monotonic clock — ``duration`` from now for a new drain, so a
        wall clock stepped meanwhile changes nothing; from the saved end otherwise."""
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        if duration is None and entry is not None and entry.until is not None:
            duration = entry.until - time.time()
        if entry is None or (duration is not None and duration <= 0):
            if self._drained.pop(name, None) is not None and entry is not None:
                log.info("[%s] drain expired", name)
        else:
            self._drained[name] = entry
            if duration is not None:
                self._timers[name] = self._loop.call_later(
                    duration, lambda: self._drain_expired(name, entry))
        self._changed(name)

    def _drain_expired(self, name: str, entry: drain.Drain) -> None:
        if self._drained.get(name) is entry:
            log.info("[%s] drain for %.0fs is over", name, entry.until - entry.since)
            self._timers.pop(name, None)
            self._drained.pop(name)
            self._changed(name)
            self._save()
            self._publish()

    def _sections(self) -> dict[str, str]:
        """Every section of the running config, with its node."""
        return {name: service.registration_key for name, service in self._services.items()}

    def _save(self, force: bool = False) -> None:
        """Persist the drains and sections off the loop, one write at a time, newest
        last; unless ``force``, only when they differ from the last ones saved."""
        state = (dict(self._drained), self._sections())
        if self._path is None or (state == self._requested and not force):
            return
        self._requested = state
        self._saving.request()

    def _write(self) -> None:
        path, drains, sections = self._path, dict(self._drained), self._sections()
        offload(self._loop, lambda: drain.save(path, drains, sections), self._saved,
                name="drain-state")

    def _saved(self, _result, error: BaseException | None) -> None:
        self._saving.release()
        self._save_error = None if error is None else str(error)
        if error is not None:
            self._requested = None  # the next change saves, whatever it is
            log.error("cannot save the drained sections to %s: %s; they would not survive "
                      "a restart", self._path, error)
        elif self._legacy is not None:
            legacy, self._legacy = self._legacy, None
            offload(self._loop, lambda: statedir.remove(legacy), lambda *_: None,
                    name="drain-state")
        self._saving.rerun_if_asked()
