"""Rounds in fresh processes, paired ratios and 95 % intervals: ratios that hold when the
deployment team re-measures. Pure statistics are checked against values computed by hand and
with hypothesis; the harness is checked for interleaving and for what the report says."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qexport.commands import benchcompare, benchreport
from qexport.runtimes.figures import noise_summary, ties
from qexport.runtimes.harness import BenchOptions, bench_directory
from qexport.runtimes.results import BENCH_SCHEMA_VERSION, ArtifactResult, BatchResult, BenchRow
from qexport.runtimes.stats import Interval, geometric_interval, paired_ratio, spread_pct, t_975, welch_ratio


def test_t_quantiles_match_the_table_values():
    assert t_975(1) == 12.706 and t_975(4) == 2.776 and t_975(4.9) == 2.776 and t_975(200) == pytest.approx(1.9719, abs=1e-4)
    with pytest.raises(ValueError):
        t_975(0.5)


def test_geometric_interval_by_hand():
    i = geometric_interval([1.0, 2.0, 4.0])  # logs 0, ln2, 2ln2: mean ln2, sd ln2
    assert i.estimate == pytest.approx(2.0)
    half = 4.303 * math.log(2) / math.sqrt(3)
    assert (i.low, i.high) == (pytest.approx(2 * math.exp(-half)), pytest.approx(2 * math.exp(half)))
    single = geometric_interval([3.0])
    assert single == Interval(pytest.approx(3.0), None, None, 1) and not single.excludes(1.0)


def test_pairing_cancels_drift_that_independent_medians_keep():
    """The host slows down 2x then 4x across rounds; the artifact stays 2x faster than the baseline
    in every round. Paired, the ratio is exactly 2 with no width; unpaired it is unknowable."""
    baseline, artifact = [1.0, 2.0, 4.0], [0.5, 1.0, 2.0]
    paired = paired_ratio(baseline, artifact)
    assert paired.estimate == pytest.approx(2.0) and paired.high - paired.low == pytest.approx(0.0, abs=1e-12)
    unpaired = welch_ratio(artifact, baseline)
    assert unpaired.estimate == pytest.approx(2.0) and not unpaired.excludes(1.0)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(min_value=0.01, max_value=1e3), min_size=2, max_size=12))
def test_interval_contains_its_estimate_and_scales(values):
    i = geometric_interval(values)
    assert i.low <= i.estimate * (1 + 1e-9) and i.estimate <= i.high * (1 + 1e-9)
    scaled = geometric_interval([v * 10 for v in values])
    assert scaled.estimate == pytest.approx(10 * i.estimate) and scaled.high == pytest.approx(10 * i.high)


def test_welch_marks_a_real_change_significant():
    before, after = [1.00, 1.02, 0.99, 1.01, 1.00], [1.20, 1.22, 1.19, 1.21, 1.20]
    change = welch_ratio(before, after)
    assert change.excludes(1.0) and change.estimate == pytest.approx(1.2, rel=0.01)
    assert benchcompare.verdict(change) == "significant: slower"
    noise = welch_ratio(before, [1.01, 0.98, 1.03, 1.00, 0.99])
    assert benchcompare.verdict(noise) == "~ not significant"
    assert benchcompare.verdict(welch_ratio([1.0], [1.1])).startswith("unknown")


def test_spread():
    assert spread_pct([1.0]) == 0.0 and spread_pct([1.0, 1.0]) == 0.0
    assert spread_pct([0.9, 1.1]) == pytest.approx(100 * math.sqrt(0.02) / 1.0)


def fake_row(family: str, round_p50: list[float]) -> BenchRow:
    p50 = geometric_interval(round_p50).estimate
    stats = BatchResult(count=len(round_p50), min_ms=min(round_p50), p50_ms=p50, p90_ms=max(round_p50), p99_ms=max(round_p50),
                        mean_ms=p50, std_ms=0.0, max_ms=max(round_p50), throughput_ips=1000 / p50,
                        round_p50_ms=round_p50, round_spread_pct=spread_pct(round_p50))
    return BenchRow(family=family, file=family, format="onnx", precision="fp32", runtime="onnxruntime",
                    result=ArtifactResult(load_ms=1.0, peak_rss_mb=1.0, batches={"1": stats}))


def test_ties_and_noise_are_reported():
    rows = [fake_row("a", [1.00, 1.30, 0.90, 1.10]), fake_row("b", [1.05, 1.00, 1.20, 1.00]),
            fake_row("c", [3.0, 3.1, 2.9, 3.0])]
    found = ties(rows, "1")
    assert {(t.faster, t.slower) for t in found} in ({("b", "a")}, {("a", "b")})
    noise = noise_summary(rows, "1")
    assert noise.noisy and "--rounds" in noise.advice and "isolated cores" in noise.advice
    quiet = noise_summary([fake_row("c", [3.0, 3.01, 2.99])], "1")
    assert not quiet.noisy and quiet.advice == ""
    doc = SimpleNamespace(ties=found, noise=noise)
    lines = benchreport.uncertainty_lines(doc)
    assert lines[0].startswith("cannot be told apart at batch 1") and lines[-1].startswith("WARNING: this host was noisy")


def test_speedup_cell_marks_what_cannot_be_told_from_fp32():
    row = fake_row("x", [1.0, 1.1])
    row.speedup_vs_fp32, row.speedup_interval = {"1": 1.02}, {"1": Interval(1.02, 0.95, 1.1, 5)}
    assert benchreport.fmt_speedup(row, "1") == "~1.02 [0.95–1.10]"
    row.speedup_interval = {"1": Interval(1.02, 1.01, 1.1, 5)}
    assert benchreport.fmt_speedup(row, "1") == "1.02 [1.01–1.10]"


def test_rounds_are_interleaved_in_fresh_processes(built_artifacts, tmp_path):
    from tests.conftest import copy_artifacts

    out, _ = built_artifacts
    folder = copy_artifacts(out, tmp_path, ("resnet18.fp32.torchscript.pt", "resnet18.fp32.onnx"))
    order: list[tuple[int, str]] = []
    options = BenchOptions(rounds=3, batch_sizes=(1,), min_seconds=0.02, min_count=3, warmup=1)
    doc = bench_directory(folder, options, None, progress=lambda n, total, row, r, rounds: order.append((r, row.family)))
    assert [r for r, _ in order] == [0, 0, 1, 1, 2, 2]  # A B A B A B, never A A A B B B
    rows = {r.family: r for r in doc.rows}
    for row in rows.values():
        stats = row.result.batches["1"]
        assert row.result.rounds == 3 and len(stats.round_p50_ms) == 3
        assert stats.p50_interval_ms.low <= stats.p50_ms <= stats.p50_interval_ms.high
        assert "latencies_ms" not in doc.to_dict()["rows"][0]["result"]["batches"]["1"]  # pooled, not stored
    onnx = rows["onnx-fp32"]
    assert onnx.speedup_interval["1"].rounds == 3
    assert doc.schema_version == BENCH_SCHEMA_VERSION and doc.noise is not None and isinstance(doc.ties, list)
    single = bench_directory(folder, BenchOptions(rounds=1, batch_sizes=(1,), min_seconds=0.02, min_count=3,
                                                  warmup=1), None)
    assert all(r.result.batches["1"].p50_interval_ms.low is None for r in single.rows)
