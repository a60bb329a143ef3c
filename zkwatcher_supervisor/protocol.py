"""supervisord's event listener protocol, spoken without ever blocking the loop.

supervisord writes one header line (``ver:3.0 ... eventname:X len:N``) and
``N`` bytes of payload per event; the listener answers ``RESULT 2\\nOK`` and
``READY``.  :class:`EventParser` turns the byte stream into events and is pure;
:class:`SupervisorChannel` reads stdin as it becomes readable, hands each event
on and answers it on the spot.

What arrives on stdin is outside input: a REMOTE_COMMUNICATION payload is
whatever any XML-RPC caller sent.  A header we cannot read or a payload too
big to keep is answered like any other event and dropped — an event left
unanswered would be handed to the next listener supervisord starts, and one
that crashes us would do so for ever.
"""

from __future__ import annotations

import codecs
import logging
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .untrusted import DropLog

TYPE_CHECKING = False  # typing itself is not imported at run time (half a MB)
if TYPE_CHECKING:
    from typing import BinaryIO, TextIO

log = logging.getLogger(__name__)

# supervisord's own events are a few hundred characters; a REMOTE_COMMUNICATION
# payload is as big as its sender made it.  Bigger ones are skipped unkept.
MAX_PAYLOAD_CHARS = 1 << 20
# A header line is short; a stream with no newline in this many characters is noise.
MAX_HEADER_CHARS = 4096
# The listener's two answers, as supervisord's PEventListenerDispatcher expects
# them.  Written here rather than through supervisor.childutils.listener: that
# module imports supervisor.xmlrpc, its medusa HTTP server, http.client and
# email, which Python never unloads (measured: +6 MB RSS over kazoo's 20 MB,
# a quarter of a small host's listener).
READY = "READY\n"
RESULT_OK = "RESULT 2\nOK"


@dataclass(frozen=True)
class Event:
    headers: dict[str, str]
    payload: str
    dropped: str | None = None  # why the event cannot be used, if it cannot


def parse_header_line(line: str) -> dict[str, str]:
    """``key:value`` tokens; tokens without a colon are ignored (a value may hold one)."""
    headers = {}
    for token in line.split():
        key, sep, value = token.partition(":")
        if sep:
            headers[key] = value
    return headers


class EventParser:
    """Bytes from supervisord in, complete events out; never raises on bad input.

    supervisord counts ``len`` in characters of the payload it encodes as
    UTF-8 (as ``supervisor.childutils`` reads it, from a text stream), so the stream is
    decoded as it arrives and payloads are cut by characters, not bytes.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._buffer = ""
        self._headers: dict[str, str] | None = None
        self._length = 0
        self._skipping = 0  # payload characters still to discard (an oversized event)

    def feed(self, data: bytes) -> Iterator[Event]:
        self._buffer += self._decoder.decode(data)
        while True:
            event = self._next()
            if event is None:
                return
            yield event

    def _next(self) -> Event | None:
        if self._headers is None:
            end = self._buffer.find("\n")
            if end < 0:
                if len(self._buffer) > MAX_HEADER_CHARS:
                    size = len(self._buffer)
                    self._buffer = ""
                    return Event({}, "", f"{size} characters without a header line")
                return None
            line, self._buffer = self._buffer[:end], self._buffer[end + 1:]
            headers = parse_header_line(line)
            length = headers.get("len", "")
            if not (length.isascii() and length.isdigit() and len(length) <= 12):
                return Event(headers, "", f"header without a usable len: {line!r}")
            self._headers, self._length = headers, int(length)
            if self._length > MAX_PAYLOAD_CHARS:
                self._skipping = self._length
        if self._skipping:
            skipped = min(self._skipping, len(self._buffer))
            self._buffer = self._buffer[skipped:]
            self._skipping -= skipped
            if self._skipping:
                return None
            headers, self._headers = self._headers, None
            return Event(headers, "", f"payload of {self._length} characters is larger than "
                         f"{MAX_PAYLOAD_CHARS}")
        if len(self._buffer) < self._length:
            return None
        payload, self._buffer = self._buffer[:self._length], self._buffer[self._length:]
        headers, self._headers = self._headers, None
        return Event(headers, payload)


@dataclass(frozen=True)
class ProcessStateChange:
    """A PROCESS_STATE_* event's payload."""

    group: str
    name: str
    state: str
    from_state: str | None
    pid: int


def parse_process_state(eventname: str, payload: str) -> ProcessStateChange | None:
    """The fields of a PROCESS_STATE_* payload; None if it lacks what we need."""
    fields = parse_header_line(payload.split("\n", 1)[0])
    group, name = fields.get("groupname"), fields.get("processname")
    pid = fields.get("pid", "0") or "0"
    if not group or not name or not (pid.isascii() and pid.isdigit()) or len(pid) > 10:
        return None
    return ProcessStateChange(group, name, eventname[len("PROCESS_STATE_"):],
                              fields.get("from_state"), int(pid))


class SupervisorChannel:
    """The listener's end of the protocol: events in on stdin, answers out on stdout.

    Each complete event is handed to ``on_event`` and answered ``OK`` and
    ``READY`` at once, whatever it was.
    """

    def __init__(self, loop, stdin: BinaryIO, stdout: TextIO,
                 on_event: Callable[[dict[str, str], str], None],
                 on_eof: Callable[[], None], drops: DropLog) -> None:
        self._loop = loop
        self._fd = stdin.fileno()
        self._stdout = stdout
        self._on_event = on_event
        self._on_eof = on_eof
        self._drops = drops
        self._parser = EventParser()

    def start(self) -> None:
        os.set_blocking(self._fd, False)
        self._loop.add_reader(self._fd, self._readable)
        self._answer(READY)

    def _readable(self) -> None:
        try:
            chunk = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._loop.remove(self._fd)
            log.info("stdin closed: supervisord is gone")
            self._on_eof()
            return
        for event in self._parser.feed(chunk):
            if event.dropped is None:
                self._on_event(event.headers, event.payload)
            else:
                self._drops.drop("event", f"supervisord event dropped: {event.dropped}")
            self._answer(RESULT_OK + READY)

    def _answer(self, text: str) -> None:
        self._stdout.write(text)
        self._stdout.flush()


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
