"""How the listener's log lines reach stderr or syslog without ever holding up
the event loop, and without a library repeating itself line by line.

* :class:`LogWriter` writes queued records from a thread of its own.  Its
  queue is bounded: when stderr or ``/dev/log`` stops taking lines, records
  beyond the bound are dropped and counted, and one line says how many once
  writing works again.
* :class:`RepeatSummary` lets the first record of each kind through and counts
  the rest; whoever reports on the situation that causes them (the registry,
  for kazoo's reconnect warnings) folds the counts into its own line.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

log = logging.getLogger(__name__)


class LogWriter:
    """Writes the records the listener queues, from a thread of its own, in
    batches: each a moment after its first record.

    The moments that log most (a program died: a deletion to send) are the
    ones where every millisecond counts; writing at once would wake
    supervisord to copy our stderr into its log while ZooKeeper commits the
    deletion, on the same CPUs (bench/kill_detection.py: the median from
    SIGKILL to a consumer seeing the node gone went from 5.0 to 3.0 ms).
    Records keep the time they were made.

    At most ``limit`` records wait (queued, or taken but not written); more
    are dropped, never waited for: a log that blocks must not block the loop,
    nor grow the process without bound.
    """

    HOLD = 0.02  # seconds
    LIMIT = 10_000  # records

    def __init__(self, handler: logging.Handler, limit: int = LIMIT) -> None:
        self.records: queue.SimpleQueue = queue.SimpleQueue()
        self.limit = limit
        self._handler = handler
        self._lock = threading.Lock()
        self._pending = 0  # queued or in the writer's hands, not written yet
        self._dropped = 0
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def queue_handler(self) -> logging.Handler:
        """The handler that hands records to this writer (for the root logger)."""
        return _Enqueue(self)

    @property
    def full(self) -> bool:
        return self._pending >= self.limit

    def offer(self, record: logging.LogRecord) -> bool:
        """Queue ``record`` unless ``limit`` records wait already (then count it
        as dropped); never blocks."""
        with self._lock:
            if self._pending >= self.limit:
                self._dropped += 1
                return False
            self._pending += 1
        self.records.put(record)
        return True

    def stop(self, timeout: float = 5.0) -> bool:
        """Write everything queued so far, then end the thread.  False if the
        log did not take it all within ``timeout`` seconds."""
        self.records.put(None)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _run(self) -> None:
        while True:
            batch = [self.records.get()]
            if batch[0] is not None:
                time.sleep(self.HOLD)
            while not self.records.empty():
                batch.append(self.records.get())
            # Taken after the batch: what was dropped came after (most of) it.
            with self._lock:
                dropped, self._dropped = self._dropped, 0
            stopping = None in batch
            if stopping:
                batch = batch[:batch.index(None)]
            self._write(batch)
            with self._lock:
                self._pending -= len(batch)
            if dropped:
                self._write([log.makeRecord(
                    log.name, logging.WARNING, __file__, 0,
                    "dropped %d log records while the log was blocked", (dropped,), None)])
            if stopping:
                return

    def _write(self, records: list[logging.LogRecord]) -> None:
        handler = self._handler
        if type(handler) is not logging.StreamHandler:
            for record in records:  # syslog: a datagram each
                try:
                    handler.handle(record)
                except Exception:  # the handler's own errors are reported, not fatal
                    handler.handleError(record)
            return
        # A batch in one write: one wake-up of supervisord to copy it into its
        # log, not one per line (a thousand at start-up).
        lines = []
        for record in records:
            try:
                kept = handler.filter(record)  # 3.12+: may be a record to use instead
                if kept:
                    record = kept if isinstance(kept, logging.LogRecord) else record
                    lines.append(handler.format(record) + handler.terminator)
            except Exception:
                handler.handleError(record)
        if not lines:
            return
        handler.acquire()
        try:
            handler.stream.write("".join(lines))
            handler.flush()
        except Exception as exc:
            # Lost with the write: counted, and said once writing works again.
            with self._lock:
                self._dropped += len(lines)
            handler.handleError(log.makeRecord(
                log.name, logging.ERROR, __file__, 0, "writing %d log lines failed: %s",
                (len(lines), exc), None))
        finally:
            handler.release()


class _Enqueue(logging.Handler):
    """Hands records to the writer, their message and traceback already
    formatted here (the arguments may change once the caller moves on); drops
    (and counts) instead of waiting when the writer's queue is full.  Not
    logging.handlers.QueueHandler: that module brings pickle and socket
    servers, half a MB a listener logging to stderr never uses."""

    def __init__(self, writer: LogWriter) -> None:
        super().__init__()
        self._writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        if self._writer.full:
            self._writer.offer(record)  # counts it, without formatting it first
            return
        try:
            message = self.format(record)
            # A copy: other handlers may still see the original.  (Not
            # copy.copy, which takes longer than making the record did.)
            original, record = record, record.__class__.__new__(record.__class__)
            record.__dict__.update(original.__dict__)
            record.message = record.msg = message
            record.args = record.exc_info = record.exc_text = record.stack_info = None
            self._writer.offer(record)
        except Exception:
            self.handleError(record)


class RepeatSummary(logging.Filter):
    """For records from the loggers under ``prefix``: the first of each kind
    (same logger, level and message) passes, later ones are counted.

    :meth:`take` returns the counts as text, for a line that reports on what
    causes them.  A kind that keeps repeating while nobody takes its count
    passes again after ``flush_after`` seconds, carrying the count.
    ``dropped`` messages never pass: what they say, our own lines say.
    """

    MAX_KINDS = 50  # beyond this many kinds, new ones are counted together
    OTHER = "other messages"
    SHOWN = 120  # characters of a message quoted in a summary

    def __init__(self, prefix: str, dropped: frozenset[str] = frozenset(),
                 flush_after: float = 120.0, clock=time.monotonic) -> None:
        super().__init__()
        self.prefix = prefix
        self.dropped = dropped
        self.flush_after = flush_after
        self._clock = clock
        self._lock = threading.Lock()
        # kind -> [counted since, count]; a kind is in here once its first passed
        self._kinds: dict[tuple[str, int, str], list] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        if name != self.prefix and not name.startswith(self.prefix + "."):
            return True
        try:
            message = record.getMessage()
        except Exception:
            return True  # a broken record: the handler reports it
        if message in self.dropped:
            return False
        kind = (name, record.levelno, message)
        now = self._clock()
        with self._lock:
            entry = self._kinds.get(kind)
            if entry is None:
                if len(self._kinds) < self.MAX_KINDS:
                    self._kinds[kind] = [now, 0]
                    return True
                kind = (self.prefix, 0, self.OTHER)
                entry = self._kinds.setdefault(kind, [now, 0])
            if entry[1] and now - entry[0] >= self.flush_after and kind[2] != self.OTHER:
                count, since = entry[1], entry[0]
                entry[0], entry[1] = now, 0
                record.msg = f"{message} (and {count} more like it in {now - since:.0f} s)"
                record.args = None
                return True
            entry[1] += 1
            return False

    def take(self, forget: bool = False) -> str:
        """The counts since the last take, as text ("" if none), and reset them.
        ``forget``: also forget the kinds, so the next of each passes again."""
        now = self._clock()
        with self._lock:
            counted = [(kind, entry[1]) for kind, entry in self._kinds.items() if entry[1]]
            if forget:
                self._kinds.clear()
            else:
                for entry in self._kinds.values():
                    entry[0], entry[1] = now, 0
        counted.sort(key=lambda item: -item[1])
        parts = []
        for (_, _, message), count in counted:
            shown = message if len(message) <= self.SHOWN else message[:self.SHOWN] + "..."
            parts.append(f"{shown!r} {count} time{'s' if count != 1 else ''}")
        return f"{self.prefix} repeated {', '.join(parts)}" if parts else ""


# kazoo warns on every reconnect attempt (about twice a second while no
# server answers); the registry reports the outage itself and folds these
# counts into its lines.  The two dropped ones only restate a state change
# the registry logs anyway.
KAZOO_REPEATS = RepeatSummary("kazoo", dropped=frozenset({"Transition to CONNECTING",
                                                          "Session has expired"}))
