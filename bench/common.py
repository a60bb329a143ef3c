"""Helpers shared by the benchmark scripts: percentiles and table printing."""

from __future__ import annotations

import math
import statistics


def percentile(values: list[float], fraction: float) -> float:
    """Nearest-rank percentile (p99 of 50 samples is the 50th smallest)."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(fraction * len(ordered))) - 1]


def summary_ms(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (f"p50 {statistics.median(ms):8.1f} ms   p99 {percentile(ms, 0.99):8.1f} ms   "
            f"max {max(ms):8.1f} ms")
