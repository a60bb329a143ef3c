"""Run checks without ever blocking the caller.

One thread multiplexes every running check with a selector: the check's
combined stdout/stderr pipe (kept as a short tail for the log), a pidfd that
becomes readable when it exits, and its deadline.  Each check is started with
``posix_spawn`` (a vfork: the cheapest way to start a process) in a session
and process group of its own, with stdin from /dev/null and never our stdout —
that is the supervisord protocol channel.  At the deadline, and again when
the check exits, the whole group is killed so no stray child lingers.

``tcp://host:port`` and ``http://host:port/path`` checks need no process: a
non-blocking socket in the same selector connects (and for http sends a GET
and reads the status line).
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import shlex
import signal
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

from .config import BuiltinCheck
from .health import CheckRun
from .selectwake import Waker

log = logging.getLogger(__name__)

OUTPUT_TAIL_BYTES = 2048
# Start at most this many checks before looking at results again, so with a
# thousand due at once results flow while the rest are still being started.
SPAWN_BATCH = 32
# Without pidfd (Linux < 5.3) exits are noticed by polling at this interval.
_POLL_INTERVAL = 0.05
_HAVE_PIDFD = hasattr(os, "pidfd_open")
# Characters that mean the command needs a shell; plain commands are exec'd directly.
_SHELL_SYNTAX = frozenset("|&;<>()$`\\\"'*?[#~=\n")


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


def _close_inherited_fds_on_exec() -> None:
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


class _Running:
    def __init__(self, run: CheckRun, pid: int, output_fd: int, pidfd: int | None) -> None:
        self.run = run
        self.pid = pid
        self.output_fd: int | None = output_fd
        self.pidfd = pidfd
        self.started = time.monotonic()
        self.deadline = self.started + run.timeout
        self.output = bytearray()
        self.timed_out = False

    def add_output(self, chunk: bytes) -> None:
        self.output += chunk
        del self.output[:-OUTPUT_TAIL_BYTES]


class _Probe:
    """A tcp:// or http:// check in flight."""

    def __init__(self, run: CheckRun, check: BuiltinCheck, sock: socket.socket) -> None:
        self.run = run
        self.check = check
        self.sock = sock
        self.started = time.monotonic()
        self.deadline = self.started + run.timeout
        self.response = bytearray()
        self.sent = False  # http: the request is out, now reading the answer
        self.timed_out = False


class CheckRunner:
    """Starts checks handed to :meth:`submit` and reports each outcome to ``on_result``.

    ``on_result`` runs on the runner's thread; it must be quick.
    """

    def __init__(self, on_result: ResultCallback) -> None:
        self._on_result = on_result
        self._pending: deque[CheckRun] = deque()
        self._running: dict[int, _Running] = {}  # by pid
        self._probes: set[_Probe] = set()
        self._selector = selectors.DefaultSelector()
        self._waker = Waker(self._selector)
        self._devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="checks", daemon=True)

    def start(self) -> None:
        _close_inherited_fds_on_exec()
        self._thread.start()

    def submit(self, runs: list[CheckRun]) -> None:
        """Queue checks to start now; never blocks."""
        if runs:
            self._pending.extend(runs)
            self._waker.wake()

    def stop(self, timeout: float = 0.5) -> None:
        """Kill every running check and stop the thread."""
        self._stopping = True
        self._waker.wake()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while not self._stopping:
            for key, _ in self._selector.select(self._select_timeout()):
                if key.data is None:
                    self._waker.drain()
                else:
                    kind, running = key.data
                    if kind == "out":
                        self._read_output(running)
                    elif kind == "exit":
                        self._finish(running)
                    else:
                        self._probe_ready(running)
            self._start_pending()
            self._enforce_deadlines()
            if not _HAVE_PIDFD:
                self._poll_exits()
        # Shutting down: kill what still runs; nobody wants those results.
        for probe in self._probes:
            probe.sock.close()
        for running in list(self._running.values()):
            self._kill_group(running)
            os.waitpid(running.pid, 0)

    def _select_timeout(self) -> float | None:
        if self._pending:
            return 0
        deadlines = [r.deadline for r in self._running.values() if not r.timed_out]
        deadlines += [p.deadline for p in self._probes]
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        if self._running and not _HAVE_PIDFD:
            timeout = _POLL_INTERVAL if timeout is None else min(timeout, _POLL_INTERVAL)
        return timeout

    def _start_pending(self) -> None:
        for _ in range(min(SPAWN_BATCH, len(self._pending))):
            self._spawn(self._pending.popleft())

    def _spawn(self, run: CheckRun) -> None:
        try:
            builtin = BuiltinCheck.parse(run.command)
        except ValueError as exc:
            self._report(run, CheckOutcome(False, None, False, 0.0, str(exc)))
            return
        if builtin is not None:
            self._start_probe(run, builtin)
            return
        read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
        argv = command_argv(run.command)
        try:
            # Only fds 0-2 are passed on: everything else we hold is close-on-exec.
            pid = os.posix_spawnp(argv[0], argv, os.environ, setsid=True, file_actions=[
                (os.POSIX_SPAWN_DUP2, self._devnull, 0),
                (os.POSIX_SPAWN_DUP2, write_fd, 1),
                (os.POSIX_SPAWN_DUP2, write_fd, 2),
            ])
        except (OSError, ValueError, IndexError) as exc:
            os.close(read_fd)
            self._report(run, CheckOutcome(False, None, False, 0.0, str(exc)))
            return
        finally:
            os.close(write_fd)
        pidfd = os.pidfd_open(pid) if _HAVE_PIDFD else None
        running = _Running(run, pid, read_fd, pidfd)
        self._running[pid] = running
        os.set_blocking(read_fd, False)
        self._selector.register(read_fd, selectors.EVENT_READ, ("out", running))
        if pidfd is not None:
            self._selector.register(pidfd, selectors.EVENT_READ, ("exit", running))

    def _read_output(self, running: _Running) -> None:
        try:
            chunk = os.read(running.output_fd, 65536)
        except BlockingIOError:
            return
        if chunk:
            running.add_output(chunk)
        else:
            self._close_output(running)

    def _close_output(self, running: _Running) -> None:
        self._selector.unregister(running.output_fd)
        os.close(running.output_fd)
        running.output_fd = None

    def _kill_group(self, running: _Running) -> None:
        # The leader is not reaped yet (we reap in _finish), so its pid is
        # still our process group id and cannot have been reused.
        try:
            os.killpg(running.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _start_probe(self, run: CheckRun, check: BuiltinCheck) -> None:
        try:
            # Name resolution blocks this thread only; use addresses to avoid it.
            family, kind, proto, _, address = socket.getaddrinfo(
                check.host, check.port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            self._report(run, CheckOutcome(False, None, False, 0.0, f"{check.host}: {exc}"))
            return
        sock.setblocking(False)
        probe = _Probe(run, check, sock)
        error = sock.connect_ex(address)
        if error not in (0, errno.EINPROGRESS):
            self._end_probe(probe, False, os.strerror(error))
            return
        self._probes.add(probe)
        self._selector.register(sock, selectors.EVENT_WRITE, ("probe", probe))

    def _probe_ready(self, probe: _Probe) -> None:
        if not probe.sent:
            error = probe.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                self._end_probe(probe, False, f"connect: {os.strerror(error)}")
            elif probe.check.scheme == "tcp":
                self._end_probe(probe, True, "connected")
            else:
                request = (f"GET {probe.check.path} HTTP/1.0\r\nHost: {probe.check.host}\r\n"
                           "User-Agent: zkwatcher-supervisor\r\nConnection: close\r\n\r\n")
                try:
                    probe.sock.sendall(request.encode())  # fits any socket buffer
                except OSError as exc:
                    self._end_probe(probe, False, f"send: {exc}")
                    return
                probe.sent = True
                self._selector.modify(probe.sock, selectors.EVENT_READ, ("probe", probe))
            return
        try:
            chunk = probe.sock.recv(4096)
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

    def _end_probe(self, probe: _Probe, passed: bool, detail: str) -> None:
        if probe in self._probes:
            self._probes.discard(probe)
            self._selector.unregister(probe.sock)
        probe.sock.close()
        duration = time.monotonic() - probe.started
        self._report(probe.run, CheckOutcome(passed, 0 if passed else None, probe.timed_out,
                                             duration, detail))

    def _enforce_deadlines(self) -> None:
        now = time.monotonic()
        for probe in list(self._probes):
            if now >= probe.deadline:
                probe.timed_out = True
                self._end_probe(probe, False, "no answer")
        for running in list(self._running.values()):
            if not running.timed_out and now >= running.deadline:
                running.timed_out = True
                self._kill_group(running)

    def _poll_exits(self) -> None:
        for running in list(self._running.values()):
            if os.waitid(os.P_PID, running.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
                self._finish(running)

    def _finish(self, running: _Running) -> None:
        if running.pid not in self._running:
            return
        self._kill_group(running)  # whatever the check left behind
        _, status = os.waitpid(running.pid, 0)
        returncode = os.waitstatus_to_exitcode(status)
        del self._running[running.pid]
        if running.pidfd is not None:
            self._selector.unregister(running.pidfd)
            os.close(running.pidfd)
        if running.output_fd is not None:
            try:
                running.add_output(os.read(running.output_fd, 65536))
            except BlockingIOError:
                pass
            self._close_output(running)
        duration = time.monotonic() - running.started
        passed = returncode == 0 and not running.timed_out
        output = running.output.decode("utf-8", "replace")
        self._report(
            running.run, CheckOutcome(passed, returncode, running.timed_out, duration, output)
        )

    def _report(self, run: CheckRun, outcome: CheckOutcome) -> None:
        try:
            self._on_result(run, outcome)
        except Exception:
            log.exception("handling the result of the check for [%s] failed", run.section)
