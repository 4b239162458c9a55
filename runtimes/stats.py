"""Latency statistics. Pure Python so it is exact, cheap to test, and runs in any worker."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default 'linear' method) of pre-sorted values."""
    if not sorted_values:
        raise ValueError("percentile of an empty sequence")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    position = (len(sorted_values) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def summarize(latencies_ms: Sequence[float], batch_size: int) -> dict:
    """min/p50/p90/p99/mean/std of per-call latencies, and throughput in images/s at the median."""
    values = sorted(latencies_ms)
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    p50 = percentile(values, 50)
    return {
        "count": n,
        "min_ms": values[0],
        "p50_ms": p50,
        "p90_ms": percentile(values, 90),
        "p99_ms": percentile(values, 99),
        "mean_ms": mean,
        "std_ms": std,
        "max_ms": values[-1],
        "throughput_ips": batch_size * 1000.0 / p50 if p50 > 0 else float("inf"),
    }


def is_stable(window: Sequence[float], previous: Sequence[float], tolerance: float = 0.05) -> bool:
    """Warm-up is over when the median of the last window is within ``tolerance`` of the one before."""
    if not window or not previous:
        return False
    a, b = percentile(sorted(window), 50), percentile(sorted(previous), 50)
    return abs(a - b) <= tolerance * max(b, 1e-12)
