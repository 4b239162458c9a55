"""Latency statistics. Pure Python so it is exact, cheap to test, and runs in any worker."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


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


def throughput_ips(batch_size: int, p50_ms: float) -> float:
    """Images per second when one call of ``batch_size`` images takes ``p50_ms`` (inf for a 0 ms call)."""
    return batch_size * 1000.0 / p50_ms if p50_ms > 0 else float("inf")


def summarize(latencies_ms: Sequence[float], batch_size: int) -> LatencySummary:
    """min/p50/p90/p99/mean/std of per-call latencies, and throughput in images/s at the median."""
    values = sorted(latencies_ms)
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    p50 = percentile(values, 50)
    return LatencySummary(count=n, min_ms=values[0], p50_ms=p50, p90_ms=percentile(values, 90),
                          p99_ms=percentile(values, 99), mean_ms=mean, std_ms=std, max_ms=values[-1],
                          throughput_ips=throughput_ips(batch_size, p50))


def min_calls_for_percentile(q: float, confidence: float = 0.99) -> int:
    """The fewest calls on which a ``q`` percentile (0.99 for p99) means something, by MLPerf
    LoadGen's early-stopping rule: the smallest n for which, with at most one call over the true
    percentile, P(Binomial(n, 1 - q) <= 1) <= 1 - confidence (64 calls for p90, 662 for p99)."""
    over = 1.0 - q
    n = 2
    while (1 - over) ** n + n * over * (1 - over) ** (n - 1) > 1 - confidence:
        n += 1
    return n


def is_stable(window: Sequence[float], previous: Sequence[float], tolerance: float = 0.05) -> bool:
    """Warm-up is over when the median of the last window is within ``tolerance`` of the one before."""
    if not window or not previous:
        return False
    a, b = percentile(sorted(window), 50), percentile(sorted(previous), 50)
    return abs(a - b) <= tolerance * max(b, 1e-12)


# ----------------------------------------------------------------------------- rounds and intervals
# Two-sided 95 % Student t critical values t(0.975, dof) for dof 1..30, tabulated so the workers and
# reports need no scipy; beyond 30 they come from the Cornish-Fisher expansion below (the normal 1.96
# alone would be 4 % short at 31 dof, where t is 2.040).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_975(dof: float) -> float:
    """t(0.975) for ``dof`` degrees of freedom (fractional dof, from Welch, rounds down: conservative)."""
    if dof < 1:
        raise ValueError(f"a t interval needs at least 1 degree of freedom, got {dof}")
    whole = int(math.floor(dof))
    return T_975[whole - 1] if whole <= len(T_975) else t_975_expansion(whole)


Z_975 = 1.959964


def t_975_expansion(dof: int) -> float:
    """t(0.975, dof) from the normal quantile by the Cornish-Fisher expansion to 1/dof^3: within
    0.0001 of the exact value from 30 degrees of freedom up (31: 2.0395; 60: 2.0003; 1000: 1.9623)."""
    z = Z_975
    return (z + (z ** 3 + z) / (4 * dof) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * dof ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * dof ** 3))


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95 % confidence interval (``low``/``high`` None with a single round)."""

    estimate: float
    low: float | None
    high: float | None
    rounds: int

    def excludes(self, value: float) -> bool:
        """True when the interval lies entirely on one side of ``value``: a real difference."""
        return self.low is not None and self.high is not None and (self.low > value or self.high < value)


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, (math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0)


def geometric_interval(values: Sequence[float]) -> Interval:
    """Geometric mean of per-round values with a t interval on their logarithms: where the mean of
    many more rounds would lie (a confidence interval).

    Why this method: each round is a fresh process, and what differs between processes (memory
    layout, allocator state, cache and frequency luck) scales a latency rather than adding to it,
    so per-round medians are close to log-normal; a t interval on logs is exact for that case and,
    unlike a bootstrap over 3-10 rounds (which cannot produce values outside the few it has and so
    under-covers), honest at small counts. It is deterministic: the same rounds give the same report.
    """
    return _log_t_interval(values, lambda n: math.sqrt(1 / n))


def prediction_interval(values: Sequence[float]) -> Interval:
    """Where ONE more round -- a deployment team's single fresh process -- will land, with 95 %
    probability: the same t interval on logs, widened from sd/sqrt(n) to sd*sqrt(1 + 1/n). The
    confidence interval of the mean is narrower and answers another question; a promise about the
    next measurement needs this one."""
    return _log_t_interval(values, lambda n: math.sqrt(1 + 1 / n))


def _log_t_interval(values: Sequence[float], scale) -> Interval:
    """exp(mean(log v) ± t(n-1) * sd(log v) * scale(n)); no interval from a single value."""
    if not values or min(values) <= 0:
        raise ValueError("a geometric interval needs positive values")
    logs = [math.log(v) for v in values]
    mean, sd = _mean_sd(logs)
    if len(logs) < 2:
        return Interval(math.exp(mean), None, None, len(logs))
    half = t_975(len(logs) - 1) * sd * scale(len(logs))
    return Interval(math.exp(mean), math.exp(mean - half), math.exp(mean + half), len(logs))


def paired_ratio(baseline_rounds: Sequence[float], rounds: Sequence[float], predict: bool = False) -> Interval:
    """Speed-up baseline/artifact, paired round by round: rounds are interleaved (A B C … A B C …),
    so round i of both saw the same state of the host and the drift cancels in their ratio.
    ``predict``: the prediction interval, where one fresh pair of measurements will land."""
    pairs = list(zip(baseline_rounds, rounds))
    if not pairs:
        raise ValueError("paired_ratio needs at least one round of each")
    ratios = [base / mine for base, mine in pairs]
    return prediction_interval(ratios) if predict else geometric_interval(ratios)


def welch_ratio(before: Sequence[float], after: Sequence[float]) -> Interval:
    """after/before for two independent runs (``qexport compare``): difference of mean logs with a
    Welch-Satterthwaite t interval (the runs' spreads need not be equal)."""
    a, b = [math.log(v) for v in before], [math.log(v) for v in after]
    (mean_a, sd_a), (mean_b, sd_b) = _mean_sd(a), _mean_sd(b)
    estimate = math.exp(mean_b - mean_a)
    if len(a) < 2 or len(b) < 2:
        return Interval(estimate, None, None, min(len(a), len(b)))
    va, vb = sd_a ** 2 / len(a), sd_b ** 2 / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return Interval(estimate, estimate, estimate, min(len(a), len(b)))
    dof = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t_975(dof) * se
    return Interval(estimate, math.exp(mean_b - mean_a - half), math.exp(mean_b - mean_a + half), min(len(a), len(b)))


def spread_pct(values: Sequence[float]) -> float:
    """Round-to-round coefficient of variation, in percent (0 for a single round)."""
    mean, sd = _mean_sd(values)
    return 100 * sd / mean if len(values) > 1 and mean > 0 else 0.0


@dataclass
class LatencySummary:
    """Per-call latencies of one batch size (see stats.summarize)."""

    count: int
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    max_ms: float
    throughput_ips: float
