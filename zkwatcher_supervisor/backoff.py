"""How long to wait before trying again after failures in a row."""

from __future__ import annotations

# Past this many doublings every delay in use is at its cap long since, and
# 2 ** exponent would no longer fit a float.
_MAX_EXPONENT = 1000


def backoff(failures: int, base: float, cap: float) -> float:
    """The pause after ``failures`` (>= 1) failures in a row: ``base``, doubling
    with each further failure, never more than ``cap``."""
    return min(base * 2.0 ** min(failures - 1, _MAX_EXPONENT), cap)


class Refusals:
    """One step that ZooKeeper may refuse for the moment (reading whole parents,
    confirming a login): refusals in a row, and until when the step waits."""

    def __init__(self, base: float, cap: float) -> None:
        self.base = base
        self.cap = cap
        self.in_a_row = 0
        self.until = 0.0  # on the time.monotonic() scale

    def refused(self, now: float) -> float:
        """Count a refusal; returns the pause before the step is tried again."""
        self.in_a_row += 1
        delay = backoff(self.in_a_row, self.base, self.cap)
        self.until = now + delay
        return delay

    def waiting(self, now: float) -> bool:
        """Whether the step is still to wait (a pass other work brings leaves it alone)."""
        return now < self.until

    def succeeded(self) -> None:
        self.in_a_row = 0
        self.until = 0.0
