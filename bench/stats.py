"""Order statistics over raw samples (no numpy: the samples are small and must stay raw)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["median", "percentile", "summary"]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (the "type 7" estimator numpy uses); NaN when empty."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def summary(values: Sequence[float]) -> dict[str, float]:
    """n, mean, p50, p95, p99, min, max."""
    if not values:
        nan = math.nan
        return {"n": 0, "mean": nan, "p50": nan, "p95": nan, "p99": nan, "min": nan, "max": nan}
    return {
        "n": len(values),
        "mean": statistics.fmean(values),
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "min": min(values),
        "max": max(values),
    }
