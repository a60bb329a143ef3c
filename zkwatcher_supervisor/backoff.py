"""How long to wait before trying again after failures in a row."""

from __future__ import annotations

# Past this many doublings every delay in use is at its cap long since, and
# 2 ** exponent would no longer fit a float.
_MAX_EXPONENT = 1000


def backoff(failures: int, base: float, cap: float) -> float:
    """The pause after ``failures`` (>= 1) failures in a row: ``base``, doubling
    with each further failure, never more than ``cap``."""
    return min(base * 2.0 ** min(failures - 1, _MAX_EXPONENT), cap)
