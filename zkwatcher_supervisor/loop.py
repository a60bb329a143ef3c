"""The one event loop: every input of the listener becomes a callback run here.

A small ``selectors`` loop in the style of supervisord's own ``runforever``:
file descriptors with a reader callback each, timers on a heap, and a
thread-safe inbox through which other threads (kazoo's, the registry worker,
slow work like reading a file) hand work to the loop.  Callbacks run one at a
time, to completion, on the thread that called :meth:`EventLoop.run` — so the
state they touch has exactly one owner and needs no lock.

Crash-only: an exception in a callback is not caught here.  It leaves
:meth:`run`, and the listener shuts down and exits non-zero.  Other threads
report theirs with :meth:`fail`.
"""

from __future__ import annotations

import heapq
import itertools
import os
import selectors
import threading
import time
from collections import deque
from collections.abc import Callable

TYPE_CHECKING = False  # typing itself is not imported at run time (half a MB)
if TYPE_CHECKING:
    from typing import Any

Callback = Callable[[], object]


class Timer:
    """A pending :meth:`EventLoop.call_at`; :meth:`cancel` makes it a no-op."""

    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callback) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True
        self.callback = _nothing  # let go of what the callback holds right away


def _nothing() -> None:
    pass


class ThreadFailed(Exception):
    """Another thread of ours hit an unexpected exception; the listener must exit."""


class EventLoop:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._selector = selectors.DefaultSelector()
        self._readers: dict[int, Callback] = {}
        self._timers: list[tuple[float, int, Timer]] = []
        self._order = itertools.count()  # keeps the heap stable for equal deadlines
        self._soon: deque[Callback] = deque()  # run on the next pass, in order
        self._inbox: deque[Callback] = deque()  # filled by other threads and signal handlers
        self._idle: list[Callback] = []
        self._running = False
        # The first error a thread handed to fail().  The one field other
        # threads write: one reference, read once after the loop has ended and
        # the listener has stopped its parts, so no lock and no queue (a thread
        # failing later still, past its stop's timeout, is logged only).
        self.failure: BaseException | None = None
        self._wake_read, self._wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._selector.register(self._wake_read, selectors.EVENT_READ, None)
        self._owner: int | None = None

    @property
    def wakeup_fd(self) -> int:
        """The fd to hand to ``signal.set_wakeup_fd`` so a signal ends a select."""
        return self._wake_write

    # -- registering work (loop thread) ------------------------------------

    def add_reader(self, fd: int, callback: Callback) -> None:
        self._readers[fd] = callback
        self._selector.register(fd, selectors.EVENT_READ, callback)

    def add_writer(self, fd: int, callback: Callback) -> None:
        self._readers[fd] = callback
        self._selector.register(fd, selectors.EVENT_WRITE, callback)

    def modify(self, fd: int, events: int, callback: Callback) -> None:
        self._readers[fd] = callback
        self._selector.modify(fd, events, callback)

    def remove(self, fd: int) -> None:
        """Stop watching ``fd`` (before closing it); unknown fds are ignored."""
        if self._readers.pop(fd, None) is not None:
            self._selector.unregister(fd)

    def call_at(self, when: float, callback: Callback) -> Timer:
        timer = Timer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        return timer

    def call_later(self, delay: float, callback: Callback) -> Timer:
        return self.call_at(self.clock() + delay, callback)

    def call_soon(self, callback: Callback) -> None:
        self._soon.append(callback)

    def on_idle(self, callback: Callback) -> None:
        """Run ``callback`` after every pass, once the ready callbacks have run."""
        self._idle.append(callback)

    # -- from any thread ---------------------------------------------------

    def post(self, callback: Callback) -> None:
        """Run ``callback`` on the loop.  Safe from any thread and from a signal handler."""
        self._inbox.append(callback)
        self._wake()

    def fail(self, error: BaseException) -> None:
        """End the loop with ``error`` (from any thread).  Kept in ``failure``
        too: a thread may fail after the loop has ended (while shutting down)."""
        if self.failure is None:
            self.failure = error

        def crash() -> None:
            raise ThreadFailed(f"{threading.current_thread().name}: {error!r}") from error

        self.post(crash)

    def stop(self) -> None:
        self.post(self._stop)

    def _stop(self) -> None:
        self._running = False

    def _wake(self) -> None:
        try:
            os.write(self._wake_write, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: a wake-up is pending anyway

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    # -- running -------------------------------------------------------------

    def run(self) -> None:
        """Run until :meth:`stop`; an exception from any callback propagates."""
        self._running = True
        while self._running:
            self.run_once()

    def run_once(self, timeout: float | None = None) -> None:
        wait = self._next_timeout() if timeout is None else timeout
        for key, _ in self._selector.select(wait):
            if key.data is None:
                self._drain_wakeups()
                continue
            # A callback earlier in this batch may have removed this fd (and
            # the fd number may even be reused already): run only what is
            # registered now.
            fd = key.fd
            if self._readers.get(fd) is key.data:
                key.data()
        self._run_inbox()
        self._run_timers()
        self._run_soon()
        for callback in self._idle:
            callback()

    def _run_inbox(self) -> None:
        while self._inbox:
            self._inbox.popleft()()

    def _run_soon(self) -> None:
        for _ in range(len(self._soon)):
            self._soon.popleft()()

    def _run_timers(self) -> None:
        now = self.clock()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.callback()

    def _next_timeout(self) -> float | None:
        if self._soon or self._inbox:
            return 0
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - self.clock())

    def close(self) -> None:
        self._selector.close()
        os.close(self._wake_read)
        os.close(self._wake_write)


def offload(loop: EventLoop, work: Callable[[], Any],
            done: Callable[[Any, BaseException | None], None], name: str) -> None:
    """Run blocking ``work`` on a daemon thread; ``done(result, error)`` runs on the loop.

    For rare slow jobs (a file read on reload, supervisord's XML-RPC answer, a
    name lookup): a thread each, daemon so a job that never returns cannot keep
    the process from exiting.
    """
    def job() -> None:
        try:
            result = work()
        except BaseException as exc:  # always answer, or the loop waits for ever
            error = exc  # ``exc`` is unbound after the except block
            loop.post(lambda: done(None, error))
        else:
            loop.post(lambda: done(result, None))

    threading.Thread(target=job, name=name, daemon=True).start()


class SingleFlight:
    """One run of a slow job at a time; asking while it runs means one more run after.

    For jobs whose newest input must win (a reload, a save, supervisord's
    snapshot): asks that arrive while a run is in flight fold into a single
    rerun, started when the run in flight is done.  Loop thread only.
    """

    def __init__(self, start: Callback) -> None:
        self._start = start  # begins a run; its completion calls :meth:`done`
        self._busy = False
        self._again = False

    @property
    def busy(self) -> bool:
        """Whether a run is in flight."""
        return self._busy

    def request(self) -> None:
        """Start a run now, or once more after the one in flight."""
        if self._busy:
            self._again = True
            return
        self._busy = True
        self._start()

    def release(self) -> None:
        """Stop counting the run in flight (done, or given up on); an ask stays pending."""
        self._busy = False

    def rerun_if_asked(self) -> bool:
        """Answer an ask that came during the run: returns whether one did."""
        if not self._again:
            return False
        self._again = False
        self.request()
        return True

    def done(self) -> bool:
        """The run in flight is over; returns whether another one was started."""
        self.release()
        return self.rerun_if_asked()
