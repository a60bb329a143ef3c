"""Run checks on the event loop without ever blocking it.

Each running check is a few file descriptors in the loop's selector: its
combined stdout/stderr pipe (kept as a short tail for the log), a pidfd that
becomes readable when it exits, and a deadline timer.  Each check is started
with ``posix_spawn`` (a vfork: the cheapest way to start a process) in a
session and process group of its own, with stdin from /dev/null and never our
stdout — that is the supervisord protocol channel.  It starts with no signal
blocked and SIGPIPE, SIGXFSZ and the signals we handle at their default action,
whatever the listener has ignored.  A check with a ``user`` is forked instead
(posix_spawn cannot change who runs it), with the same session, descriptors
and signal dispositions.  At the deadline, and again when the check exits, the
whole group is killed so no stray child lingers.

A check counts as failed at its deadline even if its process cannot be reaped
(a process stuck in uninterruptible sleep ignores SIGKILL); the section then
starts no new run until the old one is gone, so runs of one section never
overlap.

``tcp://host:port`` and ``http://host:port/path`` checks need no process: a
non-blocking socket connects (and for http sends a GET and reads the status
line).  Host names are resolved off the loop and cached briefly.  Every address
a name resolves to is tried in turn until one connects, all within the check's
timeout: ``localhost`` may give ``::1`` first to a service that listens on
127.0.0.1 only.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import shlex
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .config import BuiltinCheck
from .health import CheckRun
from .loop import EventLoop, Timer, offload
from .privilege import check_environment, find_program
from .procfs import HAVE_PIDFD

TYPE_CHECKING = False  # typing itself is not imported at run time (half a MB)
if TYPE_CHECKING:
    import subprocess

    from .config import ServiceSettings

log = logging.getLogger(__name__)

OUTPUT_TAIL_BYTES = 2048
# Start at most this many checks per loop pass, and stop early once a pass has
# spent this long starting them, so with a thousand due at once events and
# results are handled while the rest are still being started.  (A posix_spawn
# takes about 0.2 ms, a fork to switch users about 3 ms.)
SPAWN_BATCH = 32
SPAWN_PASS_SECONDS = 0.01
# Without pidfd (Linux < 5.3) exits are noticed by polling at this interval.
_POLL_INTERVAL = 0.05
# Characters that mean the command needs a shell; plain commands are exec'd directly.
_SHELL_SYNTAX = frozenset("|&;<>()$`\\\"'*?[#~=\n")
# How long a resolved host name is reused by tcp:// and http:// checks.
RESOLVE_TTL = 30.0
# A killed check still not reaped this long after its deadline is logged once.
UNREAPED_WARNING_AFTER = 1.0
# Signals a check gets at their default action.  Python ignores SIGPIPE and
# SIGXFSZ from its start (a pipeline in a check would see EPIPE instead of
# ending quietly), and the listener ignores the signals it handles while it
# shuts down; exec resets handlers but keeps what is ignored.
SIGNALS_RESET_IN_CHECKS = frozenset({signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM,
                                     signal.SIGINT, signal.SIGHUP, signal.SIGUSR2})
# The ones Popen's restore_signals puts back for a forked check.
_RESTORED_BY_POPEN = frozenset({signal.SIGPIPE, signal.SIGXFSZ})


def _ignore_signal(signum: int, frame) -> None:
    """Stands in for SIG_IGN while a check is forked: exec resets a caught signal."""


def command_argv(command: str) -> list[str]:
    """The argv for ``command``: split on whitespace, or ``/bin/sh -c`` for shell syntax."""
    if any(char in _SHELL_SYNTAX for char in command):
        return ["/bin/sh", "-c", command]
    return shlex.split(command)


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    returncode: int | None
    timed_out: bool
    duration: float
    output: str  # the last OUTPUT_TAIL_BYTES of stdout+stderr, or why it could not start

    def describe(self) -> str:
        if self.timed_out:
            reason = f"timed out after {self.duration:.1f}s"
        elif self.returncode is None:
            reason = "failed"
        elif self.returncode < 0:
            reason = f"killed by signal {-self.returncode}"
        else:
            reason = f"exit status {self.returncode}"
        tail = self.output.strip().splitlines()[-1:] if self.output.strip() else []
        return reason + (f": {tail[0]}" if tail else "")


ResultCallback = Callable[[CheckRun, CheckOutcome], None]


def import_for(services: Iterable[ServiceSettings]) -> None:
    """Import what starting these sections' checks needs, before the loop runs
    them (or off the loop, for a reload) rather than on it at the first
    spawn: subprocess (Popen's fork+exec), only for checks with a user; the
    others are posix_spawned, and a listener without such checks is spared
    its 0.4 MB."""
    if any(service.user is not None for service in services):
        import subprocess  # noqa: F401


def close_inherited_fds_on_exec() -> None:
    """Mark every fd above 2 close-on-exec, so checks inherit only stdin/stdout/stderr.

    Python opens its own fds close-on-exec already; this catches the ones we
    were handed at start (posix_spawn, unlike Popen, does not close them).
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the fd listdir itself used, already closed


class _Process:
    """A check command in flight, from spawn until it is reaped."""

    def __init__(self, run: CheckRun, pid: int, output_fd: int, pidfd: int | None,
                 now: float, forked: subprocess.Popen | None = None) -> None:
        self.run = run
        self.pid = pid
        # Held until we reap it: a Popen dropped while its child runs is put on
        # subprocess's list of children to reap, and the next Popen would reap
        # ours behind our back.
        self.forked = forked
        self.output_fd: int | None = output_fd
        self.pidfd = pidfd
        self.started = now
        self.output = bytearray()
        self.reported = False  # the outcome went out (at exit, deadline or cancel)
        self.timed_out = False
        self.timer: Timer | None = None

    def add_output(self, chunk: bytes) -> None:
        self.output += chunk
        del self.output[:-OUTPUT_TAIL_BYTES]


class _Probe:
    """A tcp:// or http:// check in flight."""

    def __init__(self, run: CheckRun, check: BuiltinCheck, now: float) -> None:
        self.run = run
        self.check = check
        self.sock: socket.socket | None = None
        self.started = now
        self.addresses: tuple = ()  # getaddrinfo's answer, tried in order
        self.next_address = 0
        self.failures: list[tuple[str, str]] = []  # (address, why) for each that failed
        self.response = bytearray()
        self.sent = False  # http: the request is out, now reading the answer
        self.done = False
        self.timer: Timer | None = None


class CheckRunner:
    """Starts checks on ``loop`` and reports each outcome to ``on_result`` (on the loop)."""

    def __init__(self, loop: EventLoop, on_result: ResultCallback) -> None:
        self._loop = loop
        self._on_result = on_result
        self._pending: deque[CheckRun] = deque()
        self._spawn_scheduled = False
        self._processes: dict[int, _Process] = {}  # by pid, until reaped
        self._probes: dict[str, _Probe] = {}  # by section
        self._by_section: dict[str, _Process] = {}
        self._addresses: dict[tuple[str, int], tuple[float, tuple]] = {}  # cache: all of them
        self._resolving: dict[tuple[str, int], list[_Probe]] = {}
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._poller: Timer | None = None
        self._parsed: dict[str, tuple[BuiltinCheck | None, str | None]] = {}
        self._numeric: dict[tuple[str, int], tuple | None] = {}  # literal -> addrinfo list
        # For runs that bring no environment of their own.
        self._environment = check_environment(os.environ)

    # -- the runner's API (loop thread) -------------------------------------

    def submit(self, runs: list[CheckRun]) -> None:
        """Start ``runs`` soon, a batch per loop pass; never blocks."""
        self._pending.extend(runs)
        if self._pending and not self._spawn_scheduled:
            self._spawn_scheduled = True
            self._loop.call_soon(self._start_pending)

    def busy_sections(self) -> set[str]:
        """Sections with a check queued, running, or killed but not yet reaped."""
        busy = {run.section for run in self._pending}
        busy.update(self._by_section)
        busy.update(self._probes)
        return busy

    def cancel(self, section: str) -> None:
        """Abandon the section's run: its result no longer counts (a reset or a reload)."""
        self._pending = deque(run for run in self._pending if run.section != section)
        process = self._by_section.get(section)
        if process is not None:
            process.reported = True
            self._kill_group(process)
        probe = self._probes.get(section)
        if probe is not None:
            self._close_probe(probe)

    def running(self) -> int:
        return len(self._processes) + len(self._probes)

    def stop(self, timeout: float = 0.2) -> None:
        """Kill every check; reap what dies within ``timeout``.  Results are dropped."""
        self._pending.clear()
        for probe in list(self._probes.values()):
            self._close_probe(probe)
        for process in self._processes.values():
            process.reported = True
            self._kill_group(process)
        deadline = time.monotonic() + timeout
        for process in list(self._processes.values()):
            while time.monotonic() < deadline:
                pid, status = os.waitpid(process.pid, os.WNOHANG)
                if pid:
                    if process.forked is not None:
                        process.forked.returncode = os.waitstatus_to_exitcode(status)
                    break
                time.sleep(0.005)

    # -- processes ------------------------------------------------------------

    def _start_pending(self) -> None:
        self._spawn_scheduled = False
        ends = time.monotonic() + SPAWN_PASS_SECONDS
        for _ in range(min(SPAWN_BATCH, len(self._pending))):
            self._start(self._pending.popleft())
            if time.monotonic() > ends:
                break
        if self._pending:
            self._spawn_scheduled = True
            self._loop.call_soon(self._start_pending)

    def _start(self, run: CheckRun) -> None:
        parsed = self._parsed.get(run.command)
        if parsed is None:
            # Once per command, not once per run: a thousand probes every few
            # seconds would otherwise spend their time parsing.
            try:
                parsed = (BuiltinCheck.parse(run.command), None)
            except ValueError as exc:
                parsed = (None, str(exc))
            if len(self._parsed) > 10000:
                self._parsed.clear()
            self._parsed[run.command] = parsed
        builtin, error = parsed
        if error is not None:
            self._report(run, CheckOutcome(False, None, False, 0.0, error))
        elif builtin is not None:
            self._start_probe(run, builtin)
        else:
            self._spawn(run)

    def _spawn(self, run: CheckRun) -> None:
        try:
            read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        except OSError as exc:  # out of file descriptors: this run fails, nothing else
            self._report(run, CheckOutcome(False, None, False, 0.0, f"cannot start: {exc}"))
            return
        os.set_blocking(read_fd, False)  # only our end: the check's stdout stays blocking
        argv = command_argv(run.command)
        env = self._environment if run.env is None else run.env
        forked = None
        try:
            if run.user is not None:
                forked = self._fork(run, argv, env, write_fd)
                pid = forked.pid
            else:
                program = argv[0]
                if env.get("PATH") != os.environ.get("PATH") and "/" not in program:
                    # posix_spawnp searches our PATH; the section set its own,
                    # and a program only on ours must not be found there.
                    program = find_program(program, env.get("PATH", ""))
                    if program is None:
                        raise FileNotFoundError(f"{argv[0]}: not found on the section's "
                                                f"PATH ({env.get('PATH', '')})")
                # Only fds 0-2 are passed on: everything else we hold is close-on-exec.
                pid = os.posix_spawnp(program, argv, env, setsid=True, file_actions=[
                    (os.POSIX_SPAWN_DUP2, self._devnull, 0),
                    (os.POSIX_SPAWN_DUP2, write_fd, 1),
                    (os.POSIX_SPAWN_DUP2, write_fd, 2),
                ], setsigdef=SIGNALS_RESET_IN_CHECKS, setsigmask=())
        except (OSError, ValueError, IndexError) as exc:
            os.close(read_fd)
            self._report(run, CheckOutcome(False, None, False, 0.0, str(exc)))
            return
        finally:
            os.close(write_fd)
        pidfd = None
        if HAVE_PIDFD:
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                pass  # out of file descriptors: this one is polled instead
        process = _Process(run, pid, read_fd, pidfd, self._loop.clock(), forked)
        self._processes[pid] = process
        self._by_section[run.section] = process
        self._loop.add_reader(read_fd, lambda: self._read_output(process))
        if pidfd is not None:
            self._loop.add_reader(pidfd, lambda: self._reap(process))
        if pidfd is None and self._poller is None:
            self._poller = self._loop.call_later(_POLL_INTERVAL, self._poll_exits)
        process.timer = self._loop.call_at(process.started + run.timeout,
                                           lambda: self._deadline(process))

    def _fork(self, run: CheckRun, argv: list[str], env: dict[str, str],
              output_fd: int) -> subprocess.Popen:
        """Start a check as its user: fork, switch identity, exec.

        Only root switches: a listener that is not root was allowed to start
        only if every such check runs as the listener's own user and group, and
        then only the environment and directory differ.
        """
        user = run.user
        switch = {}
        if os.geteuid() == 0:
            switch = {"user": user.uid, "group": user.gid, "extra_groups": list(user.groups)}
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, ())
        if blocked:
            # The child inherits this thread's signal mask; a check must start
            # with none blocked, as posix_spawn starts the others.
            signal.pthread_sigmask(signal.SIG_SETMASK, ())
        # exec keeps a signal ignored (the listener ignores those it handles
        # while it shuts down): for the fork they are caught by a handler that
        # does nothing instead — still ignored for us — so the check starts
        # with them at their default, as a posix_spawned one does.
        ignored = [signum for signum in SIGNALS_RESET_IN_CHECKS - _RESTORED_BY_POPEN
                   if signal.getsignal(signum) == signal.SIG_IGN]
        for signum in ignored:
            signal.signal(signum, _ignore_signal)
        import subprocess  # in sys.modules already (import_for): no file is read here

        try:
            # restore_signals: SIGPIPE and SIGXFSZ back to their defaults.
            return subprocess.Popen(
                argv, stdin=self._devnull, stdout=output_fd, stderr=output_fd, env=env,
                cwd=user.directory, close_fds=True, restore_signals=True,
                start_new_session=True, **switch)
        except subprocess.SubprocessError as exc:
            raise ValueError(str(exc)) from exc  # reported as the check's failure
        finally:
            for signum in ignored:
                signal.signal(signum, signal.SIG_IGN)
            if blocked:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)

    def _read_output(self, process: _Process) -> None:
        try:
            chunk = os.read(process.output_fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            process.add_output(chunk)
        else:
            self._close_output(process)

    def _close_output(self, process: _Process) -> None:
        if process.output_fd is not None:
            self._loop.remove(process.output_fd)
            os.close(process.output_fd)
            process.output_fd = None

    def _kill_group(self, process: _Process) -> None:
        # The leader is not reaped yet (we reap in _reap), so its pid is
        # still our process group id and cannot have been reused.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _deadline(self, process: _Process) -> None:
        self._kill_group(process)
        if not process.reported:
            # Counted as failed now, not when (if ever) the kill takes effect.
            process.timed_out = True
            process.reported = True
            self._report_process(process, None)
        process.timer = self._loop.call_later(UNREAPED_WARNING_AFTER,
                                              lambda: self._still_unreaped(process))

    def _still_unreaped(self, process: _Process) -> None:
        if process.pid in self._processes:
            log.warning("[%s] check (pid %d) did not die after SIGKILL (uninterruptible "
                        "sleep?); no new run until it does", process.run.section, process.pid)

    def _reap(self, process: _Process) -> None:
        if process.pid not in self._processes:
            return
        self._kill_group(process)  # whatever the check left behind
        _, status = os.waitpid(process.pid, 0)  # it has exited: returns at once
        if process.forked is not None:
            process.forked.returncode = os.waitstatus_to_exitcode(status)  # reaped: by us
        del self._processes[process.pid]
        if self._by_section.get(process.run.section) is process:
            del self._by_section[process.run.section]
        if process.timer is not None:
            process.timer.cancel()
        if process.pidfd is not None:
            self._loop.remove(process.pidfd)
            os.close(process.pidfd)
        if process.output_fd is not None:
            try:
                process.add_output(os.read(process.output_fd, 65536))
            except BlockingIOError:
                pass
            self._close_output(process)
        if not process.reported:
            process.reported = True
            self._report_process(process, os.waitstatus_to_exitcode(status))
        else:
            # A killed or abandoned run is gone: the section may run again.
            self._on_result(process.run, None)

    def _report_process(self, process: _Process, returncode: int | None) -> None:
        duration = self._loop.clock() - process.started
        passed = returncode == 0 and not process.timed_out
        output = process.output.decode("utf-8", "replace")
        self._report(process.run,
                     CheckOutcome(passed, returncode, process.timed_out, duration, output))

    def _poll_exits(self) -> None:
        self._poller = None
        unwatched = [process for process in self._processes.values() if process.pidfd is None]
        for process in unwatched:
            if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                self._reap(process)
        if any(process.pidfd is None for process in self._processes.values()):
            self._poller = self._loop.call_later(_POLL_INTERVAL, self._poll_exits)

    # -- probes -----------------------------------------------------------------

    def _start_probe(self, run: CheckRun, check: BuiltinCheck) -> None:
        probe = _Probe(run, check, self._loop.clock())
        self._probes[run.section] = probe
        key = (check.host, check.port)
        if key not in self._numeric:
            try:
                ipaddress.ip_address(check.host)
            except ValueError:
                self._numeric[key] = None  # a name: resolved off the loop below
            else:
                self._numeric[key] = tuple(socket.getaddrinfo(
                    check.host, check.port, type=socket.SOCK_STREAM,
                    flags=socket.AI_NUMERICHOST))
        if self._numeric[key] is not None:
            self._connect(probe, self._numeric[key])
            return
        cached = self._addresses.get(key)
        if cached is not None and cached[0] > self._loop.clock():
            self._connect(probe, cached[1])
            return
        waiting = self._resolving.get(key)
        if waiting is not None and waiting[0] + RESOLVE_TTL < self._loop.clock():
            waiting = None  # that lookup hangs: let a new one try (the old one is ignored)
        if waiting is None:
            waiting = self._resolving[key] = [self._loop.clock()]
        # Probes that time out while waiting are skipped when the answer comes.
        waiting[1:] = [p for p in waiting[1:] if not p.done] + [probe]
        self._arm_deadline(probe)
        if len(waiting) == 2:
            # Name lookups block; one at a time per name, off the loop.
            offload(self._loop,
                    lambda: tuple(socket.getaddrinfo(check.host, check.port,
                                                     type=socket.SOCK_STREAM)),
                    lambda addresses, error, lookup=waiting: self._resolved(
                        key, lookup, addresses, error),
                    name="resolve")

    def _resolved(self, key: tuple[str, int], lookup: list, addresses,
                  error: BaseException | None) -> None:
        if error is None:
            self._addresses[key] = (self._loop.clock() + RESOLVE_TTL, addresses)
        if self._resolving.get(key) is lookup:
            del self._resolving[key]
        for probe in lookup[1:]:
            if probe.done:
                continue
            if error is None:
                self._connect(probe, addresses)
            else:
                self._end_probe(probe, False, f"{key[0]}: {error}")

    def _arm_deadline(self, probe: _Probe) -> None:
        """Fail ``probe`` at its deadline; only probes that have to wait need one."""
        if probe.timer is None:
            probe.timer = self._loop.call_at(
                probe.started + probe.run.timeout,
                lambda: self._end_probe(probe, False, self._no_answer(probe), timed_out=True))

    def _no_answer(self, probe: _Probe) -> str:
        if probe.failures:
            return f"no answer (after {_describe_failures(probe.failures)})"
        return "no answer"

    def _connect(self, probe: _Probe, addresses: tuple) -> None:
        probe.addresses = addresses
        probe.next_address = 0
        self._connect_next(probe)

    def _connect_next(self, probe: _Probe) -> None:
        """Connect to the probe's next address; when none is left, the probe fails."""
        if probe.next_address >= len(probe.addresses):
            self._end_probe(probe, False, self._all_failed(probe))
            return
        family, kind, proto, _, sockaddr = probe.addresses[probe.next_address]
        probe.next_address += 1
        try:
            sock = socket.socket(family, kind | socket.SOCK_NONBLOCK, proto)
        except OSError as exc:  # e.g. IPv6 disabled: the next address may do
            self._connect_failed(probe, f"socket: {exc.strerror or exc}")
            return
        probe.sock = sock
        error = sock.connect_ex(sockaddr)
        if error == errno.EINPROGRESS:
            # On loopback -- where most probes go: a host checks its own
            # services -- the handshake is over by now, and asking again says
            # so without a round through the selector.
            error = sock.connect_ex(sockaddr)
            if error == errno.EISCONN:
                error = 0
        if error in (errno.EALREADY, errno.EINPROGRESS):
            self._arm_deadline(probe)
            self._loop.add_writer(sock.fileno(), lambda: self._probe_ready(probe))
        elif error:
            self._connect_failed(probe, os.strerror(error))
        else:
            self._connected(probe)

    def _connect_failed(self, probe: _Probe, why: str) -> None:
        """The current address failed to connect: note why and try the next."""
        if probe.sock is not None:
            self._loop.remove(probe.sock.fileno())
            probe.sock.close()
            probe.sock = None
        family, _, _, _, sockaddr = probe.addresses[probe.next_address - 1]
        where = f"[{sockaddr[0]}]" if family == socket.AF_INET6 else sockaddr[0]
        probe.failures.append((f"{where}:{sockaddr[1]}", why))
        self._connect_next(probe)

    def _all_failed(self, probe: _Probe) -> str:
        if len(probe.failures) == 1 and probe.check.host == probe.addresses[0][4][0]:
            # The one address tried is the one the check names: no need to repeat it.
            return f"connect: {probe.failures[0][1]}"
        return f"connect: {_describe_failures(probe.failures)}"

    def _connected(self, probe: _Probe) -> None:
        """The connection is up: a tcp:// probe has passed, an http:// one asks."""
        if probe.check.scheme == "tcp":
            self._end_probe(probe, True, "connected")
            return
        request = (f"GET {probe.check.path} HTTP/1.0\r\nHost: {probe.check.host}\r\n"
                   "User-Agent: zkwatcher-supervisor\r\nConnection: close\r\n\r\n")
        try:
            probe.sock.send(request.encode())  # far smaller than any socket buffer
        except OSError as exc:
            self._end_probe(probe, False, f"send: {exc}")
            return
        probe.sent = True
        self._arm_deadline(probe)
        fd = probe.sock.fileno()
        self._loop.remove(fd)  # watched for writing if the connect had to wait
        self._loop.add_reader(fd, lambda: self._probe_ready(probe))

    def _probe_ready(self, probe: _Probe) -> None:
        sock = probe.sock
        if not probe.sent:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._connect_failed(probe, os.strerror(error))
            else:
                self._connected(probe)
            return
        try:
            chunk = sock.recv(4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._end_probe(probe, False, f"recv: {exc}")
            return
        probe.response += chunk
        if b"\n" not in probe.response and chunk and len(probe.response) < 8192:
            return  # the status line is not complete yet
        status_line = bytes(probe.response).split(b"\n", 1)[0].decode("latin-1").strip()
        parts = status_line.split()
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            self._end_probe(probe, False, f"no HTTP status line: {status_line[:80]!r}")
            return
        code = int(parts[1])
        expected = probe.run.expect_status
        passed = code == expected if expected is not None else 200 <= code < 300
        self._end_probe(probe, passed, status_line)

    def _close_probe(self, probe: _Probe) -> None:
        probe.done = True
        if self._probes.get(probe.run.section) is probe:
            del self._probes[probe.run.section]
        if probe.timer is not None:
            probe.timer.cancel()
        if probe.sock is not None:
            self._loop.remove(probe.sock.fileno())
            probe.sock.close()
            probe.sock = None

    def _end_probe(self, probe: _Probe, passed: bool, detail: str,
                   timed_out: bool = False) -> None:
        if probe.done:
            return
        self._close_probe(probe)
        duration = self._loop.clock() - probe.started
        self._report(probe.run, CheckOutcome(passed, 0 if passed else None, timed_out,
                                             duration, detail))

    def _report(self, run: CheckRun, outcome: CheckOutcome) -> None:
        self._on_result(run, outcome)


def _describe_failures(failures: list[tuple[str, str]]) -> str:
    return "; ".join(f"{where}: {why}" for where, why in failures)
