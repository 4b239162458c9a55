"""The figures bench.json reports, assembled from the workers' rounds: each artifact's combined
latency and throughput, its speed-up and size ratio against the baseline artifact, its agreement
with that artifact, how noisy the host was, and which neighbours the rounds cannot tell apart.

Kept apart from the harness (which starts processes) so every number here is a pure function of
hand-made rows and can be checked against a value computed by hand (tests/test_numbers.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qexport.core.manifest import Precision
from qexport.runtimes.results import (BASELINE, ArtifactResult, BatchResult, BenchRow, Noise, RoundResult, RunFacts,
                                      Tie)
from qexport.runtimes.stats import (Interval, geometric_interval, paired_ratio, percentile, prediction_interval,
                                    spread_pct, summarize, throughput_ips)

NOISY_SPREAD_PCT = 5.0  # median round-to-round spread of p50 above which the report warns


def combine_rounds(rounds: list[RoundResult]) -> ArtifactResult:
    """One result from a row's rounds: latencies pooled over all rounds' calls, each statistic's
    per-round values kept, and the p50 as the geometric mean of round p50s with its 95 % interval.
    Load, memory, accuracy and harness overhead come from the first round (which measured them)."""
    first = rounds[0]
    facts = {f.name: getattr(first, f.name) for f in dataclasses.fields(RunFacts)}
    facts["peak_rss_mb"] = max(r.peak_rss_mb for r in rounds)
    batches = {}
    for batch, first_batch in first.batches.items():
        per_round = [r.batches[batch] for r in rounds]
        pooled = summarize([ms for r in per_round for ms in r.latencies_ms], int(batch))
        round_p50 = [r.p50_ms for r in per_round]
        p50 = geometric_interval(round_p50)
        batches[batch] = BatchResult(
            **{**dataclasses.asdict(pooled), "p50_ms": p50.estimate,
               "throughput_ips": throughput_ips(int(batch), p50.estimate)},
            pooled_p50_ms=pooled.p50_ms, p50_interval_ms=p50, p50_prediction_ms=prediction_interval(round_p50),
            round_p50_ms=round_p50,
            round_spread_pct=spread_pct(round_p50), warmup=[r.warmup for r in per_round],
            harness_overhead_pct=first_batch.harness_overhead_pct)
    loads = [r.load_ms for r in rounds]
    firsts = [r.first_inference_ms for r in rounds if r.first_inference_ms is not None]
    firsts = firsts if len(firsts) == len(rounds) else []
    cold = [load + first for load, first in zip(loads, firsts)]
    return ArtifactResult(**facts, batches=batches, rounds=len(rounds), round_load_ms=loads, round_first_call_ms=firsts,
                          load_ms_interval=positive_interval(loads), first_call_ms_interval=positive_interval(firsts),
                          cold_start_ms_interval=positive_interval(cold))


def merge_parts(parts: list[RoundResult]) -> RoundResult:
    """One round from the workers that ran an artifact's batch sizes under different settings: the
    first part's load, first call, accuracy and LoadGen (it ran the smallest batch), every part's
    batches, and the highest memory any of them reached."""
    if len(parts) == 1:
        return parts[0]
    batches = {batch: stats for part in parts for batch, stats in part.batches.items()}
    return dataclasses.replace(parts[0], batches=batches, peak_rss_mb=max(part.peak_rss_mb for part in parts))


def positive_interval(values: list[float]) -> Interval | None:
    """The geometric mean of per-round times with its 95 % interval, like p50 (None: nothing recorded)."""
    return geometric_interval([max(v, 1e-6) for v in values]) if values else None


def add_agreement(rows: list[BenchRow], logits: dict[str, np.ndarray]) -> None:
    """Top-1 agreement and max |Δlogit| of every artifact against the baseline *artifact*
    (TorchScript fp32 in its runtime), not the eager model the manifest compares with."""
    reference = logits.get(BASELINE)
    if reference is None:
        return
    for row in rows:
        mine = logits.get(row.family)
        if mine is not None and mine.shape == reference.shape and row.measured and row.result.eval is not None:
            row.result.eval.agreement_with_baseline_artifact = float((mine.argmax(1) == reference.argmax(1)).mean())
            row.result.eval.max_abs_logit_diff = float(np.abs(mine - reference).max())


def add_ratios(rows: list[BenchRow]) -> None:
    """Speed-up vs the baseline artifact per batch size, paired round by round, with its 95 %
    interval; and the size ratio (how many times smaller than the baseline)."""
    base = next((r for r in rows if r.family == BASELINE and r.measured), None)
    if base is None:
        return
    for row in rows:
        if not row.measured:
            continue
        row.size_ratio_vs_fp32 = base.size_bytes / row.size_bytes
        if row is base:  # 1 by definition: no interval to show, nothing to mark '~'
            row.speedup_vs_fp32 = {b: 1.0 for b in row.result.batches}
            continue
        row.speedup_interval = {b: paired_ratio(base.result.batches[b].round_medians(), stats.round_medians())
                                for b, stats in row.result.batches.items() if b in base.result.batches}
        row.speedup_vs_fp32 = {b: i.estimate for b, i in row.speedup_interval.items()}


def fastest_fp32(rows: list[BenchRow], batch: str) -> BenchRow | None:
    """The fp32 artifact with the lowest p50 at ``batch``: what a deployment team would otherwise ship."""
    candidates = [row for row in rows if row.precision == Precision.FP32 and row.batch(batch)]
    return min(candidates, key=lambda row: row.batch(batch).p50_ms, default=None)


def add_best_fp32_ratios(rows: list[BenchRow], batches: list[str]) -> dict[str, str]:
    """Speed-up of every artifact against the fastest fp32 artifact of this run at each batch size,
    paired by round, with its confidence and prediction intervals; returns which family that was.
    Against the slowest fp32 baseline alone a report flatters int8 (the gap is mostly fp32 runtime
    overhead); against the best one it says what switching from the fp32 artifact one would ship gains."""
    chosen = {}
    for batch in batches:
        best = fastest_fp32(rows, batch)
        if best is None:
            continue
        chosen[batch] = best.family
        reference = best.batch(batch).round_medians()
        for row in rows:
            if not row.batch(batch):
                continue
            if row is best:  # 1 by definition
                row.speedup_vs_best_fp32[batch] = row.speedup_vs_best_fp32_prediction[batch] = Interval(1.0, None, None, len(reference))
                continue
            mine = row.batch(batch).round_medians()
            row.speedup_vs_best_fp32[batch] = paired_ratio(reference, mine)
            row.speedup_vs_best_fp32_prediction[batch] = paired_ratio(reference, mine, predict=True)
    return chosen


def noise_summary(rows: list[BenchRow], batch: str) -> Noise:
    """How much the host moved between rounds (median over artifacts of the round-to-round spread of
    p50 at ``batch``), and what helps when that is large."""
    spreads = sorted(row.batch(batch).round_spread_pct for row in rows if row.batch(batch))
    median = percentile(spreads, 50) if spreads else 0.0
    noisy = median > NOISY_SPREAD_PCT
    advice = (f"this host was noisy: p50 moved {median:.1f} % between rounds (median over artifacts, batch {batch}); "
              "more rounds (--rounds), longer rounds (--min-seconds), an idle machine or isolated cores "
              "(isolcpus, no other work on the pinned core) narrow the intervals") if noisy else ""
    return Noise(batch=batch, median_round_spread_pct=median, noisy=noisy, advice=advice)


def ties(rows: list[BenchRow], batch: str) -> list[Tie]:
    """Neighbours in the latency ranking at ``batch`` whose paired ratio interval contains 1: the
    measurement cannot tell them apart, and the report must not rank them. The ratio is the slower
    one's time over the faster one's (at least 1 on the estimate)."""
    ranked = sorted((row for row in rows if row.batch(batch)), key=lambda row: row.batch(batch).p50_ms)
    found = []
    for faster, slower in zip(ranked, ranked[1:]):
        ratio = paired_ratio(slower.batch(batch).round_medians(), faster.batch(batch).round_medians())
        if ratio.low is not None and not ratio.excludes(1.0):
            found.append(Tie(batch=batch, faster=faster.family, slower=slower.family, ratio=ratio))
    return found


def cannot_tell_from_one(interval: Interval | None) -> bool:
    """An interval that contains 1×: the measurement cannot tell this artifact from fp32."""
    return interval is not None and interval.low is not None and not interval.excludes(1.0)
