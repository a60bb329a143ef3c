"""Helpers for input from outside the process: parse it bounded, drop it quietly.

Anyone who may call supervisord's XML-RPC can put bytes in front of the
listener, and files we read back may be truncated or forged.  Such input is
checked where it enters; what we cannot use is logged — truncated, and once
per kind per minute, so a flood of it cannot flood the log — and ignored.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable

TYPE_CHECKING = False  # typing itself is not imported at run time (half a MB)
if TYPE_CHECKING:
    from typing import Any

log = logging.getLogger(__name__)

# Longest excerpt of bad input that goes into a log line.
EXCERPT_CHARS = 200
DROP_LOG_INTERVAL = 60.0


class Unusable(ValueError):
    """Input we cannot use; the message says what is wrong with it."""


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """A one-line, bounded, printable rendering of ``value`` for a log line."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text)} chars)"
    return printable(text)


def printable(text: str) -> str:
    """``text`` with control characters escaped, so it cannot fake log or status lines."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


def load_json(text: str | bytes, limit: int) -> Any:
    """``json.loads`` for untrusted text: bounded in size, Unusable on any failure.

    Deep nesting raises RecursionError inside the decoder and very long
    integers ValueError; both are just bad input here.
    """
    if len(text) > limit:
        raise Unusable(f"{len(text)} bytes, more than {limit}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise Unusable(f"not JSON ({excerpt(str(exc), 80)})") from None


def number(value: Any, what: str, low: float, high: float) -> float:
    """``value`` as a finite float in [low, high]; booleans are not numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Unusable(f"{what} is not a number: {excerpt(value, 40)}")
    try:
        result = float(value)
    except OverflowError:  # an integer with hundreds of digits
        raise Unusable(f"{what} is out of range") from None
    if not (math.isfinite(result) and low <= result <= high):
        raise Unusable(f"{what} must be between {low:g} and {high:g}, got {excerpt(value, 40)}")
    return result


def text_field(value: Any, what: str, limit: int) -> str:
    """A string field: bounded, printable."""
    if not isinstance(value, str):
        raise Unusable(f"{what} is not a string: {excerpt(value, 40)}")
    if len(value) > limit:
        raise Unusable(f"{what} is longer than {limit} characters")
    return printable(value)


class DropLog:
    """Logs dropped input at most once per kind per interval, with a count of the rest.

    Used from one thread (the event loop).
    """

    def __init__(self, interval: float = DROP_LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self.dropped = 0  # every drop, logged or not

    def drop(self, kind: str, message: str) -> None:
        self.dropped += 1
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        self._last[kind] = now
        more = self._suppressed.pop(kind, 0)
        log.warning("%s%s", excerpt(message, 2 * EXCERPT_CHARS),
                    f" ({more} more like it in the last {now - last:.0f}s)" if more else "")
