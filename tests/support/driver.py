"""Playing supervisord's side of the listener protocol, byte for byte."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable


class ProtocolDriver:
    """Plays supervisord's side of the listener protocol over pipes, byte for byte."""

    def __init__(self, config: Path, env: dict | None = None, args: tuple = (),
                 command: tuple = (sys.executable, "-m", "zkwatcher_supervisor"),
                 stderr_pipe: bool = False) -> None:
        """``stderr_pipe``: the listener's stderr is a pipe (``process.stderr``)
        that the test reads, or leaves unread, itself; else a file (:meth:`stderr`)."""
        self.stderr_path = config.parent / "listener.stderr"
        with open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [*command, "-c", str(config), *args],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE if stderr_pipe else stderr,
                env={**os.environ, **(env or {})},
            )
        self.stdout = b""  # read from the listener's stdout, not yet matched
        self.transcript: list[bytes] = []  # protocol tokens matched so far
        self.serial = 0

    def _expect(self, token: bytes, timeout: float) -> None:
        """Read until ``token`` arrives; it must be the very next thing on stdout."""
        deadline = time.monotonic() + timeout
        fd = self.process.stdout.fileno()
        while len(self.stdout) < len(token):
            assert token.startswith(self.stdout), f"stray bytes on stdout: {self.stdout!r}"
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError(f"no {token!r} on stdout within {timeout}s: {self.stdout!r}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError(f"listener closed stdout: {self.stdout!r}")
            self.stdout += chunk
        assert self.stdout.startswith(token), f"stray bytes on stdout: {self.stdout!r}"
        self.stdout = self.stdout[len(token):]
        self.transcript.append(token)

    def wait_ready(self, timeout: float = 10.0) -> None:
        self._expect(b"READY\n", timeout)

    def send(self, eventname: str, payload: str, timeout: float = 5.0) -> float:
        """Send one event and return the seconds until its RESULT came back."""
        if self.transcript[-1] != b"READY\n":
            self.wait_ready(timeout)
        self.serial += 1
        body = payload.encode()
        header = (f"ver:3.0 server:supervisor serial:{self.serial} pool:zkwatcher "
                  f"poolserial:{self.serial} eventname:{eventname} len:{len(body)}\n").encode()
        started = time.monotonic()
        self.process.stdin.write(header + body)
        self.process.stdin.flush()
        self._expect(b"RESULT 2\nOK", timeout)
        return time.monotonic() - started

    def tick(self) -> float:
        return self.send("TICK_5", f"when:{int(time.time())}")

    def close_stdin(self) -> None:
        self.process.stdin.close()

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self) -> None:
        """Kill the listener, and the process groups of the checks it was running
        (each in a session of its own: a killed listener cannot end them)."""
        if self.process.poll() is None:
            try:
                with open(f"/proc/{self.process.pid}/task/{self.process.pid}/children") as f:
                    checks = [int(pid) for pid in f.read().split()]
            except OSError:
                checks = []
            self.process.kill()
            self.process.wait()
            for pid in checks:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass


class Ticker:
    """Sends TICK_5 to a driven listener every ``interval`` seconds from a thread, as
    supervisord would; other events go through :meth:`send` so they never interleave."""

    def __init__(self, drv: ProtocolDriver, interval: float = 0.5) -> None:
        self.drv = drv
        self.interval = interval
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Ticker:
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stop.set()
        self._thread.join()
        # A ticker that stopped while the listener still runs would leave the test
        # without the events it relies on.  (A listener the test itself ended may
        # break the pipe mid-tick; its exit status is checked by the test.)
        if exc_type is None and self.error is not None and self.drv.process.poll() is None:
            raise AssertionError(f"the ticker stopped: {self.error!r}")

    def send(self, eventname: str, payload: str) -> float:
        with self._lock:
            return self.drv.send(eventname, payload)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                with self._lock:
                    self.drv.tick()
            except Exception as exc:  # the listener died or stopped answering
                self.error = exc
                return


def terminate(drv: ProtocolDriver) -> tuple[int, float]:
    """SIGTERM the listener; its exit status and how long it took to exit."""
    started = time.monotonic()
    drv.process.terminate()
    try:
        status = drv.process.wait(10)
    except subprocess.TimeoutExpired:
        raise AssertionError("the listener hangs after SIGTERM") from None
    return status, time.monotonic() - started


def state_event(drv_or_ticker, name: str, state: str, from_state: str, pid: int = 0) -> None:
    extra = f" pid:{pid}" if state == "RUNNING" else ""
    drv_or_ticker.send(f"PROCESS_STATE_{state}",
                       f"processname:{name} groupname:{name} from_state:{from_state}{extra}")


def tick_until(drv: ProtocolDriver, predicate: Callable[[], object], timeout: float,
               what: str) -> None:
    """Tick the listener until ``predicate`` holds, as supervisord's TICK events would."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s\n{drv.stderr()}")
        drv.tick()
        time.sleep(0.2)
