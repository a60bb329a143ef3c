"""The log writer's bound and the summary of repeated library warnings, as
pure logic with a clock and a handler of the test's own."""

from __future__ import annotations

import logging
import re
import threading
import time

from hypothesis import given
from hypothesis import strategies as st

from zkwatcher_supervisor.logs import LogWriter, RepeatSummary
from zkwatcher_supervisor.testing import wait_until


def record(name: str, message: str, level: int = logging.WARNING, *args) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, args, None)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_the_first_of_each_kind_passes_and_the_rest_are_counted():
    clock = Clock()
    summary = RepeatSummary("kazoo", clock=clock)
    refused = "Connection dropped: socket connection error: Connection refused"
    assert summary.filter(record("kazoo.protocol.connection", "Connection dropped: %s",
                                 logging.WARNING, "socket connection broken"))
    assert summary.filter(record("kazoo.protocol.connection", refused))
    assert [summary.filter(record("kazoo.protocol.connection", refused))
            for _ in range(39)] == [False] * 39
    assert summary.filter(record("zkwatcher_supervisor.registry", refused))  # not kazoo's
    assert summary.filter(record("kazoology", refused))  # nor a logger that merely starts alike
    assert summary.take() == f"kazoo repeated {refused!r} 39 times"
    assert summary.take() == ""
    # Without forget, the kinds stay known: the next one is counted, not shown.
    assert not summary.filter(record("kazoo.protocol.connection", refused))
    assert summary.take(forget=True) == f"kazoo repeated {refused!r} 1 time"
    assert summary.filter(record("kazoo.protocol.connection", refused))  # a new outage


def test_dropped_messages_never_pass():
    summary = RepeatSummary("kazoo", dropped=frozenset({"Transition to CONNECTING"}))
    assert not summary.filter(record("kazoo.protocol.connection", "Transition to CONNECTING"))
    assert summary.take() == ""


def test_a_kind_nobody_takes_passes_again_with_its_count_after_flush_after():
    clock = Clock()
    summary = RepeatSummary("kazoo", flush_after=120.0, clock=clock)
    assert summary.filter(record("kazoo.client", "odd"))
    clock.now = 60.0
    assert not summary.filter(record("kazoo.client", "odd"))
    clock.now = 119.0
    assert not summary.filter(record("kazoo.client", "odd"))
    clock.now = 121.0
    again = record("kazoo.client", "odd")
    assert summary.filter(again)
    assert again.getMessage() == "odd (and 2 more like it in 121 s)"
    assert summary.take() == ""
    # A take (a progress line) restarts the wait: no line of kazoo's own then.
    clock.now = 200.0
    assert not summary.filter(record("kazoo.client", "odd"))
    clock.now = 300.0
    assert summary.take() == "kazoo repeated 'odd' 1 time"
    clock.now = 400.0
    assert not summary.filter(record("kazoo.client", "odd"))


def test_kinds_beyond_the_limit_are_counted_together():
    summary = RepeatSummary("kazoo")
    assert all(summary.filter(record("kazoo.client", f"m{i}"))
               for i in range(RepeatSummary.MAX_KINDS))
    assert not summary.filter(record("kazoo.client", "one more"))
    assert not summary.filter(record("kazoo.client", "and another"))
    assert summary.take() == "kazoo repeated 'other messages' 2 times"


def test_a_record_whose_message_cannot_be_made_is_left_to_the_handler():
    summary = RepeatSummary("kazoo")
    assert summary.filter(record("kazoo.client", "%d", logging.WARNING, "not a number"))


@given(st.lists(st.tuples(st.sampled_from(["kazoo.client", "kazoo.protocol.connection",
                                           "zkwatcher_supervisor.registry"]),
                          st.sampled_from(["a", "b", "Connection dropped: x"]),
                          st.booleans(), st.floats(0, 100))))
def test_every_record_is_shown_or_counted(steps):
    """Whatever arrives in whatever order: each record passes, or is in a count."""
    clock = Clock()
    summary = RepeatSummary("kazoo", clock=clock)
    shown = counted = 0
    for name, message, take, advance in steps:
        clock.now += advance
        rec = record(name, message)
        if summary.filter(rec):
            shown += 1
            carried = re.search(r"\(and (\d+) more like it", rec.getMessage())
            counted += int(carried.group(1)) if carried else 0
        if take:
            counted += sum(int(n) for n in re.findall(r"' (\d+) times?", summary.take()))
    counted += sum(int(n) for n in re.findall(r"' (\d+) times?", summary.take()))
    assert shown + counted == len(steps)


class BlockingHandler(logging.Handler):
    """Takes lines only once ``open`` is set, as a pipe nobody reads."""

    def __init__(self) -> None:
        super().__init__()
        self.open = threading.Event()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.open.wait()
        self.lines.append(record.getMessage())


def test_a_blocked_writer_drops_beyond_its_limit_and_says_so_once_unblocked():
    handler = BlockingHandler()
    writer = LogWriter(handler, limit=100)
    writer.start()
    logger = logging.getLogger("test_log_writer.blocked")
    logger.propagate = False
    logger.addHandler(writer.queue_handler())
    try:
        started = time.monotonic()
        for i in range(1000):
            logger.warning("line %d", i)
        assert time.monotonic() - started < 1.0  # dropping, not waiting
        handler.open.set()
        writer.stop()
    finally:
        logger.handlers.clear()
    # 100 lines were taken (the first batch is in the writer's hands, blocked),
    # the other 900 dropped, and said so once, after the lines it kept.
    assert handler.lines[:-1] == [f"line {i}" for i in range(100)]
    assert handler.lines[-1] == "dropped 900 log records while the log was blocked"


def test_an_unblocked_writer_writes_everything_in_order():
    handler = BlockingHandler()
    handler.open.set()
    writer = LogWriter(handler, limit=100)
    writer.start()
    for i in range(250):
        writer.offer(record("x", f"line {i}"))
        if i % 50 == 49:
            time.sleep(0.1)  # the writer catches up between bursts
    writer.stop()
    assert handler.lines == [f"line {i}" for i in range(250)]


class CountingStream:
    """A stderr of the test's own: what was written, and in how many writes.
    The first write waits for ``gate``; ``fail`` makes writes raise."""

    def __init__(self) -> None:
        self.writes: list[str] = []
        self.gate = threading.Event()
        self.fail = False

    def write(self, text: str) -> None:
        self.gate.wait(10)
        if self.fail:
            raise BrokenPipeError(32, "Broken pipe")
        self.writes.append(text)

    def flush(self) -> None:
        pass


def stream_writer(stream: CountingStream) -> tuple[LogWriter, logging.Logger]:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    writer = LogWriter(handler)
    writer.start()
    logger = logging.getLogger(f"test_log_writer.stream{id(stream)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(writer.queue_handler())
    return writer, logger


def test_lines_to_stderr_go_out_in_order_a_batch_per_write():
    stream = CountingStream()
    writer, logger = stream_writer(stream)
    try:
        for i in range(1000):  # a start-up's worth while the first write waits
            logger.info("registered /svc/host:%d", i)
        stream.gate.set()
        writer.stop()
    finally:
        logger.handlers.clear()
    assert "".join(stream.writes) == "".join(f"INFO registered /svc/host:{i}\n"
                                             for i in range(1000))
    # Each write wakes supervisord to copy it into its log: the first line(s),
    # then the rest in one, not a thousand.
    assert len(stream.writes) <= 3, [text.count("\n") for text in stream.writes]


def test_lines_a_failed_write_lost_are_counted_and_said_when_writing_works_again():
    stream = CountingStream()
    stream.gate.set()
    stream.fail = True
    writer, logger = stream_writer(stream)
    try:
        for i in range(5):
            logger.info("line %d", i)
        wait_until(lambda: writer.records.empty() and not writer.full, 5)
        time.sleep(0.1)  # the writer's batch is written (and fails)
        stream.fail = False
        logger.info("after")
        writer.stop()
    finally:
        logger.handlers.clear()
    assert "".join(stream.writes) == ("INFO after\n"
                                      "WARNING dropped 5 log records while the log was blocked\n")
