"""Every number the bench and the reports assemble, from hand-made rows with answers known in
advance: a baseline at 2 ms against an artifact at 1 ms is 2.0x, 40 MB against 10 MB is 4.0x
smaller, 90 % against 92 % is -2.0 points. No worker, no model: each test fails when a formula
is turned round (speed-up, size ratio, top-1 change, throughput, the ties' ratio)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
import math

import numpy as np
import pytest

from qexport.commands import benchcompare, benchplots, benchreport, report
from qexport.core.documents import parse
from qexport.core.build_records import AccuracyBudget
from qexport.core.manifest import Evaluation, Manifest
from qexport.commands.pack import latency_section, model_card
from qexport.runtimes.figures import add_agreement, add_best_fp32_ratios, add_ratios, combine_rounds, noise_summary, ties
from qexport.runtimes.results import (ArtifactResult, BASELINE, BatchResult, BenchDocument, BenchRow, EvalResult,
                                      RoundBatch, RoundResult, load_bench)
from qexport.runtimes.bench_options import RunOptions
from qexport.runtimes.environment import CpuRecord, Environment
from qexport.runtimes.stats import Interval, geometric_interval, spread_pct, summarize, throughput_ips
from tests.conftest import minimal_manifest

MB = 1_000_000


# ----------------------------------------------------------------------------- hand-made rows
def batch_result(round_p50_ms: list[float], batch_size: int = 1) -> BatchResult:
    """One batch size as combine_rounds leaves it, from the rounds' medians alone."""
    p50 = geometric_interval(round_p50_ms)
    return BatchResult(count=len(round_p50_ms), min_ms=min(round_p50_ms), p50_ms=p50.estimate,
                       p90_ms=max(round_p50_ms), p99_ms=max(round_p50_ms), mean_ms=p50.estimate, std_ms=0.0,
                       max_ms=max(round_p50_ms), throughput_ips=throughput_ips(batch_size, p50.estimate),
                       p50_interval_ms=p50, round_p50_ms=list(round_p50_ms), round_spread_pct=spread_pct(round_p50_ms))


def bench_row(family: str, rounds: dict[str, list[float]] | None, size_mb: float = 10, precision: str = "fp32",
              evaluation: EvalResult | None = None) -> BenchRow:
    """A row measured at each batch size of ``rounds`` (round medians in ms); None: not measured."""
    result = None if rounds is None else ArtifactResult(
        load_ms=1.0, peak_rss_mb=1.0, eval=evaluation,
        batches={b: batch_result(medians, int(b)) for b, medians in rounds.items()}, rounds=3)
    return BenchRow(family=family, file=f"{family}.file", format="onnx", precision=precision, runtime="onnxruntime",
                    status="ok" if rounds is not None else "failed", size_bytes=int(size_mb * MB), result=result)


def bench_document(rows: list[BenchRow], batch_sizes: tuple[int, ...] = (1,)) -> BenchDocument:
    return BenchDocument(created="2026-01-01T00:00:00Z", command="qexport bench",
                         options=RunOptions(batch_sizes=batch_sizes, pinned_cores=[0], rounds=3),
                         environment=Environment(python="3.11", cpu=CpuRecord("Test CPU", {}),
                                                 libraries={"torch": "2.14.0", "onnxruntime": "1.23.0"}),
                         rows=rows)


def evaluation(top1: float, fp32_top1: float) -> Evaluation:
    return Evaluation(samples=100, top1=top1, fp32_reference_top1=fp32_top1, top1_agreement_with_eager=0.95,
                      max_abs_logit_diff=0.1)


def built_manifest(size_mb: float, top1: float, fp32_top1: float, file: str = "resnet18.int8.onnx") -> Manifest:
    data = minimal_manifest(file)
    data["artifact"]["size_bytes"] = int(size_mb * MB)
    data["evaluation"].update(top1=top1, fp32_reference_top1=fp32_top1)
    return parse(Manifest, data, "a hand-made manifest")


# ----------------------------------------------------------------------------- speed-up and size ratio
def test_speedup_is_the_baseline_time_over_the_artifact_time():
    base, fast = bench_row(BASELINE, {"1": [2.0, 2.0, 2.0]}), bench_row("onnx-fp32", {"1": [1.0, 1.0, 1.0]})
    add_ratios([base, fast])
    assert fast.speedup_vs_fp32 == {"1": pytest.approx(2.0)}
    assert fast.speedup_interval["1"] == Interval(pytest.approx(2.0), pytest.approx(2.0), pytest.approx(2.0), 3)
    assert base.speedup_vs_fp32 == {"1": 1.0} and base.speedup_interval == {}


def test_an_artifact_slower_than_the_baseline_is_below_one():
    base, slow = bench_row(BASELINE, {"1": [1.0, 1.0, 1.0]}), bench_row("onnx-int8", {"1": [2.0, 2.0, 2.0]})
    add_ratios([slow, base])  # the baseline need not come first
    assert slow.speedup_vs_fp32["1"] == pytest.approx(0.5)


def test_speedup_interval_is_paired_round_by_round_by_hand():
    """Round ratios 2, 4, 2: geometric mean 16^(1/3); logs ln2·(1, 2, 1) have sd ln2/√3, so the
    half-width on the log scale is t(0.975, 2)·(ln2/√3)/√3 = 4.303·ln2/3."""
    base, row = bench_row(BASELINE, {"1": [2.0, 4.0, 2.0]}), bench_row("onnx-fp32", {"1": [1.0, 1.0, 1.0]})
    add_ratios([base, row])
    interval = row.speedup_interval["1"]
    centre, half = 4 / 3 * math.log(2), 4.303 * math.log(2) / 3
    assert interval.estimate == pytest.approx(16 ** (1 / 3))
    assert (interval.low, interval.high) == (pytest.approx(math.exp(centre - half)), pytest.approx(math.exp(centre + half)))


def test_speedup_per_batch_size_only_where_the_baseline_has_it():
    base = bench_row(BASELINE, {"1": [2.0] * 3, "32": [40.0] * 3})
    row = bench_row("onnx-fp32", {"1": [1.0] * 3, "32": [10.0] * 3, "128": [30.0] * 3})
    add_ratios([base, row])
    assert row.speedup_vs_fp32 == {"1": pytest.approx(2.0), "32": pytest.approx(4.0)}


def test_size_ratio_is_how_many_times_smaller_than_the_baseline():
    base, row = bench_row(BASELINE, {"1": [1.0] * 3}, size_mb=40), bench_row("onnx-int8", {"1": [1.0] * 3}, size_mb=10)
    add_ratios([base, row])
    assert row.size_ratio_vs_fp32 == pytest.approx(4.0) and base.size_ratio_vs_fp32 == pytest.approx(1.0)


def test_no_ratio_without_a_measured_baseline_or_for_an_unmeasured_row():
    failed = bench_row("onnx-fp32", None)
    add_ratios([bench_row(BASELINE, {"1": [1.0] * 3}), failed])
    assert failed.size_ratio_vs_fp32 is None and failed.speedup_vs_fp32 == {}
    orphan = bench_row("onnx-fp32", {"1": [1.0] * 3})
    add_ratios([bench_row(BASELINE, None), orphan])
    assert orphan.size_ratio_vs_fp32 is None and orphan.speedup_vs_fp32 == {}


# ----------------------------------------------------------------------------- throughput and combined rounds
def test_throughput_is_images_per_second_at_the_median():
    assert throughput_ips(32, 2.0) == pytest.approx(16_000.0)
    assert summarize([2.0, 2.0, 2.0], batch_size=32).throughput_ips == pytest.approx(16_000.0)


def round_result(latencies_by_batch: dict[str, list[float]], load_ms: float, peak_rss_mb: float) -> RoundResult:
    batches = {b: RoundBatch(**asdict(summarize(ms, int(b))), latencies_ms=ms, harness_overhead_pct=load_ms / 100)
               for b, ms in latencies_by_batch.items()}
    return RoundResult(load_ms=load_ms, peak_rss_mb=peak_rss_mb, batches=batches)


def test_combined_rounds_take_the_geometric_mean_of_round_medians():
    """Round medians 1, 2, 4 ms: p50 2 ms (their geometric mean), 16000 img/s at batch 32; the
    pooled median of every call (4 ms here) is kept beside it, not used for the p50."""
    rounds = [round_result({"32": [1.0, 1.0, 1.0]}, load_ms=10.0, peak_rss_mb=100.0),
              round_result({"32": [2.0, 2.0]}, load_ms=20.0, peak_rss_mb=300.0),
              round_result({"32": [4.0] * 6}, load_ms=30.0, peak_rss_mb=200.0)]
    combined = combine_rounds(rounds)
    stats = combined.batches["32"]
    assert stats.p50_ms == pytest.approx(2.0) and stats.throughput_ips == pytest.approx(16_000.0)
    assert stats.pooled_p50_ms == pytest.approx(4.0) and stats.round_p50_ms == [1.0, 2.0, 4.0]
    assert (stats.count, stats.min_ms, stats.max_ms) == (11, 1.0, 4.0)
    assert stats.round_spread_pct == pytest.approx(spread_pct([1.0, 2.0, 4.0]))
    # by hand: logs 0, ln 2, ln 4 -> mean ln 2, sd ln 2; 2 * exp(-/+ t(2) 4.303 * ln 2 / sqrt 3)
    assert (stats.p50_interval_ms.low, stats.p50_interval_ms.high) == (pytest.approx(0.3575, abs=1e-3),
                                                                        pytest.approx(11.19, abs=1e-2))
    assert combined.rounds == 3 and combined.peak_rss_mb == 300.0  # the worst round's memory
    assert combined.load_ms == 10.0 and stats.harness_overhead_pct == pytest.approx(0.1)  # the first round's


# ----------------------------------------------------------------------------- agreement with the baseline artifact
def test_agreement_is_the_share_of_top1_predictions_the_baseline_artifact_shares():
    reference = np.array([[3, 0, 0], [0, 3, 0], [0, 0, 3], [3, 0, 0]], np.float32)  # predicts 0, 1, 2, 0
    mine = np.array([[2, 0, 0], [0, 3, 0], [0, 0, 3], [0, 3, 0]], np.float32)       # predicts 0, 1, 2, 1
    rows = [bench_row(BASELINE, {"1": [1.0] * 3}, evaluation=EvalResult(4, 0.5)),
            bench_row("onnx-int8", {"1": [1.0] * 3}, evaluation=EvalResult(4, 0.5)),
            bench_row("no-eval", {"1": [1.0] * 3})]
    add_agreement(rows, {BASELINE: reference, "onnx-int8": mine, "no-eval": mine})
    base, int8 = rows[0].result.eval, rows[1].result.eval
    assert int8.agreement_with_baseline_artifact == pytest.approx(0.75) and int8.max_abs_logit_diff == pytest.approx(3.0)
    assert base.agreement_with_baseline_artifact == 1.0 and base.max_abs_logit_diff == 0.0
    assert rows[2].result.eval is None


def test_no_agreement_without_the_baseline_logits_or_with_another_shape():
    row = bench_row("onnx-int8", {"1": [1.0] * 3}, evaluation=EvalResult(4, 0.5))
    add_agreement([row], {"onnx-int8": np.zeros((4, 3))})
    add_agreement([row], {BASELINE: np.zeros((4, 3)), "onnx-int8": np.zeros((5, 3))})
    assert row.result.eval.agreement_with_baseline_artifact is None


def test_an_older_bench_json_reads_its_agreement_under_the_new_name(tmp_path):
    row = bench_row("onnx-int8", {"1": [1.0] * 3}, evaluation=EvalResult(4, 0.5, agreement_with_baseline_artifact=0.75))
    old = bench_document([row]).to_dict()
    old["schema_version"] = 2
    evaluation_json = old["rows"][0]["result"]["eval"]
    evaluation_json["agreement_with_fp32"] = evaluation_json.pop("agreement_with_baseline_artifact")
    (tmp_path / "bench.json").write_text(json.dumps(old))
    assert load_bench(tmp_path / "bench.json").rows[0].result.eval.agreement_with_baseline_artifact == 0.75


# ----------------------------------------------------------------------------- ties and noise
def test_a_tie_names_the_faster_first_and_its_ratio_is_slower_over_faster():
    """Round ratios 1.2, 0.9, 1.1, 1.0: the interval holds 1, and the estimate is their geometric mean."""
    rows = [bench_row("b", {"1": [1.2, 0.9, 1.1, 1.0]}), bench_row("a", {"1": [1.0, 1.0, 1.0, 1.0]}),
            bench_row("c", {"1": [3.0, 3.1, 2.9, 3.0]})]
    [tie] = ties(rows, "1")
    assert (tie.batch, tie.faster, tie.slower) == ("1", "a", "b")
    assert tie.ratio.estimate == pytest.approx((1.2 * 0.9 * 1.1 * 1.0) ** 0.25) and tie.ratio.estimate > 1
    assert tie.ratio.low < 1 < tie.ratio.high


def test_no_tie_with_a_single_round():
    assert ties([bench_row("a", {"1": [1.0]}), bench_row("b", {"1": [1.01]})], "1") == []


def test_noise_is_the_median_round_spread_over_artifacts():
    """Spreads 100·√0.02 ≈ 14.1 %, 100·√0.005 ≈ 7.1 % and 100·√0.0008 ≈ 2.8 %: median 7.1 %, noisy (> 5 %)."""
    rows = [bench_row("a", {"1": [0.9, 1.1]}), bench_row("b", {"1": [0.95, 1.05]}), bench_row("c", {"1": [0.98, 1.02]}),
            bench_row("unmeasured", None)]
    noise = noise_summary(rows, "1")
    assert noise.median_round_spread_pct == pytest.approx(100 * math.sqrt(0.005)) and noise.noisy
    assert "p50 moved 7.1 % between rounds" in noise.advice
    quiet = noise_summary(rows[2:], "1")
    assert quiet.median_round_spread_pct == pytest.approx(100 * math.sqrt(0.0008)) and not quiet.noisy
    assert noise_summary([], "1").median_round_spread_pct == 0.0


# ----------------------------------------------------------------------------- what the bench report prints
def test_bench_tables_show_the_ratios_throughput_and_agreement():
    rows = [bench_row(BASELINE, {"1": [2.0] * 3}, size_mb=40, evaluation=EvalResult(4, 0.9)),
            bench_row("onnx-int8", {"1": [1.0] * 3}, size_mb=10, precision="int8",
                      evaluation=EvalResult(4, 0.88, agreement_with_baseline_artifact=0.75))]
    add_ratios(rows)
    doc = bench_document(rows)
    doc.best_fp32 = add_best_fp32_ratios(rows, ["1"])
    header, body = benchreport.table_rows(doc)
    cells = dict(zip(header, body[1]))
    assert cells["MB"] == "10.0" and cells["× smaller"] == "4.00"
    assert cells["top-1"] == "88.00%" and cells["agree w/ baseline"] == "75.00%"
    header, body = benchreport.batch_rows(doc, "1")
    assert header[3] == f"× best fp32 ({BASELINE})"
    cells = dict(zip(header, body[1]))
    assert cells[f"× {BASELINE}"] == "2.00 [2.00–2.00]" and cells["img/s"] == "1000"
    assert cells["p50 ms [95 % CI]"] == "1.000 [1.000–1.000]" and cells[header[3]] == "2.00 [2.00–2.00]"
    assert dict(zip(header, body[0]))[f"× {BASELINE}"] == "1.00"


# ----------------------------------------------------------------------------- against the fastest fp32
def test_speedup_against_the_fastest_fp32_artifact_not_only_the_baseline():
    """TorchScript fp32 at 4 ms, ONNX fp32 at 2 ms (the fastest fp32), int8 at 1 ms: int8 is 4x the
    baseline but only 2x what a team would otherwise ship; the best fp32 is 1 against itself."""
    rows = [bench_row(BASELINE, {"1": [4.0] * 3}), bench_row("onnx-fp32", {"1": [2.0] * 3}),
            bench_row("onnx-int8", {"1": [1.0] * 3}, precision="int8"),
            bench_row("fast-fp16", {"1": [0.5] * 3}, precision="fp16")]  # not fp32: never the reference
    add_ratios(rows)
    assert add_best_fp32_ratios(rows, ["1"]) == {"1": "onnx-fp32"}
    base, onnx, int8, _ = rows
    assert int8.speedup_vs_fp32["1"] == pytest.approx(4.0) and int8.speedup_vs_best_fp32["1"].estimate == pytest.approx(2.0)
    assert base.speedup_vs_best_fp32["1"].estimate == pytest.approx(0.5)
    assert onnx.speedup_vs_best_fp32["1"].estimate == 1.0 and onnx.speedup_vs_best_fp32["1"].low is None
    doc = bench_document(rows)
    doc.best_fp32 = {"1": "onnx-fp32"}
    [line] = benchreport.headline_lines(doc)
    assert line.startswith("batch 1: fastest is fast-fp16, 4.00 [4.00–4.00]× the fastest fp32 artifact (onnx-fp32")


def test_a_prediction_interval_is_wider_than_the_confidence_interval_by_sqrt_n_plus_1():
    """Rounds 1, 2, 4 ms: logs 0, ln2, 2 ln2 (mean ln2, sd ln2), t(2) = 4.303. Confidence half-width
    4.303 ln2 / sqrt(3); prediction half-width 4.303 ln2 sqrt(1 + 1/3)."""
    from qexport.runtimes.stats import geometric_interval, prediction_interval

    ln2, t = math.log(2), 4.303
    confidence, prediction = geometric_interval([1.0, 2.0, 4.0]), prediction_interval([1.0, 2.0, 4.0])
    assert confidence.estimate == prediction.estimate == pytest.approx(2.0)
    assert confidence.high == pytest.approx(2 * math.exp(t * ln2 / math.sqrt(3)))
    assert prediction.high == pytest.approx(2 * math.exp(t * ln2 * math.sqrt(4 / 3)))
    assert prediction.low == pytest.approx(2 * math.exp(-t * ln2 * math.sqrt(4 / 3)))
    combined = combine_rounds([round_result({"1": [m]}, 1.0, 1.0) for m in (1.0, 2.0, 4.0)]).batches["1"]
    assert combined.p50_prediction_ms.high == pytest.approx(prediction.high)


def test_int8_slower_than_the_baseline_is_flagged_from_measured_rounds():
    rows = [bench_row(BASELINE, {"1": [1.0] * 3}), bench_row("slow-int8", {"1": [2.0] * 3}, precision="int8"),
            bench_row("fast-int8", {"1": [0.5] * 3}, precision="int8")]
    add_ratios(rows)
    [line] = benchreport.slower_int8_lines(rows)
    assert line.startswith("slow-int8.file: int8 is SLOWER than TorchScript fp32 at batch 1 (0.50x)")


def test_speedup_marks_and_colours_follow_the_interval():
    row = bench_row("x", {"1": [1.0] * 3})
    row.speedup_vs_fp32, row.speedup_interval = {"1": 1.02}, {"1": Interval(1.02, 0.95, 1.1, 3)}
    assert benchreport.fmt_speedup(row, "1") == "~1.02 [0.95–1.10]" and benchplots.speedup_colour(row, "1") == "tab:gray"
    row.speedup_vs_fp32, row.speedup_interval = {"1": 0.8}, {"1": Interval(0.8, 0.75, 0.85, 3)}
    assert benchplots.speedup_colour(row, "1") == "tab:red"
    row.speedup_vs_fp32, row.speedup_interval = {"1": 1.5}, {"1": Interval(1.5, 1.4, 1.6, 3)}
    assert benchplots.speedup_colour(row, "1") == "tab:green"


def write_bench(path, rounds_by_family: dict[str, list[float]]):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bench_document([bench_row(f, {"1": r}) for f, r in rounds_by_family.items()]).to_dict()))
    return path


def test_compare_reports_the_change_of_each_artifact_against_the_reference_run(tmp_path):
    """A run 25 % slower in every round is '+25.0 %, significant: slower'; 20 % faster is '-20.0 %'."""
    before = [0.98, 1 / 0.98, 1.02, 1 / 1.02, 1.0]  # geometric mean 1
    reference = write_bench(tmp_path / "a" / "bench.json", {"slower": before, "faster": before, "same": before})
    other = write_bench(tmp_path / "b" / "bench.json", {"slower": [1.25 * v for v in before],
                                                        "faster": [0.8 * v for v in before],
                                                        "same": list(reversed(before))})
    header, body = benchcompare.compare([reference, other])
    cells = {row[header.index("artifact")]: dict(zip(header, row)) for row in body}
    assert cells["slower"]["change"] == "+25.0 %" and cells["slower"]["verdict"] == "significant: slower"
    assert cells["slower"]["p50 ms before"] == "1.000" and cells["slower"]["p50 ms after"] == "1.250"
    assert cells["faster"]["change"] == "-20.0 %" and cells["faster"]["verdict"] == "significant: faster"
    assert cells["same"]["change"] == "+0.0 %" and cells["same"]["verdict"] == "~ not significant"


def test_interval_in_percent():
    assert benchcompare.interval_pct(Interval(1.25, 1.2, 1.3, 5)) == "[+20.0 %, +30.0 %]"
    assert benchcompare.interval_pct(Interval(0.8, 0.75, 0.85, 5)) == "[-25.0 %, -15.0 %]"


def test_harness_overhead_is_the_timer_cost_over_the_fastest_p50():
    """50 ns per call against a 0.5 ms p50 is 0.010 % of it."""
    row = bench_row("a", {"1": [0.5] * 3, "8": [2.0] * 3})
    row.result.timer_cost_ns = 50.0
    row.result.batches["1"].harness_overhead_pct = 0.3
    lines = benchreport.harness_overhead_lines(bench_document([row], (1, 8)))
    assert "costs 50 ns per call" in lines[3] and "at most 0.010 % of any p50" in lines[3]
    assert lines[-1] == "| a | 1 | +0.30 |"


def test_the_environment_line_lists_every_recorded_library():
    line = benchreport.environment_lines(bench_document([]))[2]
    assert line.startswith("torch 2.14.0, onnxruntime 1.23.0, IPEX not installed")


# ----------------------------------------------------------------------------- the manifest's top-1 change, build table, model card
def test_top1_change_is_the_artifact_minus_the_eager_fp32_model_in_points():
    assert evaluation(top1=0.90, fp32_top1=0.92).change_pt == pytest.approx(-2.0)
    assert evaluation(top1=0.93, fp32_top1=0.92).change_pt == pytest.approx(1.0)


def test_the_build_evaluation_scores_the_artifact_and_the_fp32_reference_each_on_its_own():
    """The artifact's logits predict 0, 1, 2, 1 and the fp32 reference's 0, 0, 0, 0 on labels 0, 1,
    2, 0: the artifact is right on 3 of 4, the reference on 2 of 4 (the two turned round would
    say 0.5 and 0.75), they agree on 1 of 4, and the largest logit difference is 6 (row 4, class 0)."""
    import torch

    from qexport.exporter.measure import evaluation as build_evaluation

    labels = torch.tensor([0, 1, 2, 0])
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [0.0, 5.0, 0.0]])
    reference = torch.tensor([[4.0, 0.0, 0.0], [3.0, 1.0, 0.0], [2.0, 0.0, 1.0], [6.0, 0.0, 0.0]])
    result = build_evaluation(logits, reference, labels)
    assert (result.samples, result.top1, result.fp32_reference_top1) == (4, 0.75, 0.5)
    assert (result.top1_agreement_with_eager, result.max_abs_logit_diff) == (0.25, 6.0)


def test_the_build_measurement_passes_the_artifact_logits_first(tiny_data, monkeypatch, tmp_path):
    """measure() itself, with the runtime stood in for: the artifact's logits and the reference's
    are the hand-made ones above, so their order in the call decides 0.75 against 0.5."""
    from types import SimpleNamespace

    import torch

    from qexport.exporter import measure as measuring
    from qexport.exporter.registry import BuildDetails

    labels = torch.tensor([0, 1, 2, 0])
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [0.0, 5.0, 0.0]])
    reference = SimpleNamespace(split=SimpleNamespace(labels=labels),
                                logits=torch.tensor([[4.0, 0.0, 0.0], [3.0, 1.0, 0.0], [2.0, 0.0, 1.0], [6.0, 0.0, 0.0]]))
    runner = SimpleNamespace(predict=lambda x: np.zeros((len(x), 3), np.float32))
    monkeypatch.setattr(measuring, "runner_logits", lambda *args, **kwargs: (runner, logits))
    ctx = SimpleNamespace(data=tiny_data, shared=SimpleNamespace(golden_samples=2))
    family = SimpleNamespace(key="stand-in", precision="int8")
    measured = measuring.measure(family, tmp_path / "unused", ctx, reference, BuildDetails())
    assert (measured.evaluation.top1, measured.evaluation.fp32_reference_top1) == (0.75, 0.5)
    assert measured.golden_inputs.shape == (2, 3, 32, 32) and measured.golden_outputs.shape == (2, 3)


def test_build_table_shows_size_ratio_and_top1_change():
    cells = report.built_cells(built_manifest(size_mb=10, top1=0.90, fp32_top1=0.92), base_size=40 * MB)
    assert cells[:5] == ["resnet18.int8.onnx", "10.00", "4.00", "90.00%", "-2.00"]
    assert report.built_cells(built_manifest(10, 0.9, 0.9), base_size=None)[2] == ""
    assert cells[6] == "-"  # no int8 coverage recorded
    by_layers = minimal_manifest("resnet18.int8.pt2", int8_coverage={"ratio": 0.238095, "quantized_layers": 5, "layers": 21})
    assert report.built_cells(parse(Manifest, by_layers, "a hand-made manifest"), base_size=None)[6] == "23.8% layers"


def test_int8_share_cell_says_whether_it_counts_weights_or_layers():
    from qexport.core.build_records import Int8Coverage

    assert report.int8_share_cell(Int8Coverage.of_layers(5, 21)) == "23.8% layers"
    assert report.int8_share_cell(Int8Coverage.of_weights(1, 16)) == "6.2% weights"
    assert report.int8_share_cell(None) == "-"


def test_budget_cell_shows_the_drop_its_interval_and_the_budget():
    budget = AccuracyBudget(max_drop_pt=1.0, measured_on="validation", samples=500, seed=0, fp32_top1=0.92, top1=0.918,
                            drop_pt=0.2, met=True, drop_ci95_pt=0.61, unseen=True, verdict="met",
                            kept_float=["layer4.1.conv2"])
    assert report.budget_cell(budget, "int8") == "0.20 ±0.61 / 1, 1 float"
    assert report.budget_cell(None, "fp32") == "-"


def test_model_card_shows_top1_change_speedup_and_throughput():
    card = model_card([built_manifest(size_mb=10, top1=0.90, fp32_top1=0.92)], None)
    assert "| resnet18.int8.onnx | onnx | fp32 | onnxruntime | 10.0 | 90.00% | -2.00 |" in card
    rows = [bench_row(BASELINE, {"32": [4.0] * 3}), bench_row("onnx-fp32", {"32": [3.0] * 3}),
            bench_row("onnx-int8", {"32": [2.0] * 3}, precision="int8")]
    add_ratios(rows)
    doc = bench_document(rows, (32,))
    doc.best_fp32 = add_best_fp32_ratios(rows, ["32"])
    section = "\n".join(latency_section(doc))
    assert "| onnx-int8.file | 32 | 2.000 | 2.000 | 16000 | 1.50 (onnx-fp32) | 2.00 |" in section
    assert "torch 2.14.0, onnxruntime 1.23.0" in section


# ----------------------------------------------------------------------------- what LoadGen is told to expect
def test_loadgen_expectations_come_from_the_tight_loop():
    """Batch 1 at 2 ms and batch 8 at 8 ms: one sample alone 2 ms, best per sample 1 ms, best 1000 img/s."""
    from qexport.runtimes.worker import expectations

    batches = {b: RoundBatch(**asdict(summarize(ms, int(b)))) for b, ms in {"8": [8.0] * 3, "1": [2.0] * 3}.items()}
    expect = expectations(batches)
    assert (expect.single_ms, expect.per_sample_ms, expect.offline_qps) == (2.0, 1.0, pytest.approx(1000.0))


def test_loadgen_log_values_become_milliseconds_and_the_scenario_rate(tmp_path):
    from qexport.runtimes.loadgen import result_of

    log = {"result_validity": "VALID", "result_50.00_percentile_latency_ns": 2_000_000,
           "result_90.00_percentile_latency_ns": 3_000_000, "result_99.00_percentile_per_query_latency_ns": 9_000_000,
           "result_qps_with_loadgen_overhead": 480.0, "result_samples_per_second": 900.0, "result_query_count": 64}
    single = result_of("single-stream", log, tmp_path)
    assert (single.p50_ms, single.p90_ms, single.qps, single.valid, single.reason) == (2.0, 3.0, 480.0, True, "")
    assert result_of("multi-stream", log, tmp_path).p99_ms == 9.0
    assert result_of("offline", log, tmp_path).qps == 900.0


@pytest.mark.parametrize("dof, exact", [(31, 2.0395), (40, 2.0211), (60, 2.0003), (120, 1.9799), (1000, 1.9623)])
def test_t_beyond_the_table_matches_the_exact_quantile(dof, exact):
    """Beyond 30 degrees of freedom the quantile comes from an expansion, not the normal 1.96
    (4 % short at 31); the expected values are scipy.stats.t.ppf(0.975, dof), rounded."""
    from qexport.runtimes.stats import t_975

    assert t_975(dof) == pytest.approx(exact, abs=1e-4)


def test_cold_start_is_each_rounds_load_plus_its_first_call():
    """Loads 10, 20, 40 ms and first calls 1, 2, 4 ms: geometric means 20 ms, 2 ms and 22 ms for
    their sums (11, 22, 44); a round without a first call leaves cold start unmeasured."""
    rounds = [replace(round_result({"1": [1.0]}, load_ms=load, peak_rss_mb=100.0), first_inference_ms=first)
              for load, first in ((10.0, 1.0), (20.0, 2.0), (40.0, 4.0))]
    combined = combine_rounds(rounds)
    assert combined.load_ms_interval.estimate == pytest.approx(20.0)
    assert combined.first_call_ms_interval.estimate == pytest.approx(2.0)
    assert combined.cold_start_ms_interval.estimate == pytest.approx(22.0)
    assert combined.cold_start_rounds() == [11.0, 22.0, 44.0]
    missing = combine_rounds([*rounds[:2], replace(rounds[2], first_inference_ms=None)])
    assert missing.cold_start_ms_interval is None and missing.cold_start_rounds() == []
