"""`qexport recommend` on hand-made bench documents and manifests with known answers: a clear
leader, a three-way tie broken by size, an artifact over budget, an excluded runtime, a changed
file, nothing within budget, throughput at the best batch and cold start."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qexport.commands.recommend import RecommendOptions, recommend
from qexport.core.build_records import AccuracyBudget
from qexport.core.errors import QExportError
from qexport.core.manifest import ArtifactFile, Manifest, RuntimeSection
from qexport.runtimes.bench_options import RunOptions
from qexport.runtimes.environment import CpuRecord, Environment
from qexport.runtimes.results import ArtifactResult, BatchResult, BenchDocument, BenchRow
from qexport.runtimes.stats import geometric_interval
from tests.conftest import minimal_manifest


def batch(round_p50: list[float], batch_size: int = 1) -> BatchResult:
    p50 = geometric_interval(round_p50)
    return BatchResult(count=300, min_ms=min(round_p50), p50_ms=p50.estimate, p90_ms=max(round_p50),
                       p99_ms=max(round_p50), mean_ms=p50.estimate, std_ms=0.0, max_ms=max(round_p50),
                       throughput_ips=batch_size * 1000 / p50.estimate, round_p50_ms=round_p50, p50_interval_ms=p50)


def row(family: str, runtime: str = "onnxruntime", size_mb: float = 1.0, load: list[float] | None = None,
        first: list[float] | None = None, **batches: list[float]) -> BenchRow:
    load = load or [50.0, 50.0, 50.0]
    first = first or [5.0, 5.0, 5.0]
    result = ArtifactResult(load_ms=load[0], peak_rss_mb=100.0, round_load_ms=load, round_first_call_ms=first,
                            cold_start_ms_interval=geometric_interval([a + b for a, b in zip(load, first)]),
                            batches={key.lstrip("b"): batch(values, int(key.lstrip("b"))) for key, values in batches.items()},
                            rounds=3)
    return BenchRow(family=family, file=f"m.{family}", format="onnx", precision="int8", runtime=runtime,
                    size_bytes=int(size_mb * 1e6), sha256=family.ljust(64, "0")[:64], result=result)


def manifest(family: str, runtime: str = "onnxruntime", upper_pt: float | None = None) -> Manifest:
    base = Manifest.from_dict(minimal_manifest(), "m.manifest.json")
    budget = (AccuracyBudget(max_drop_pt=1.0, measured_on="validation", samples=1000, seed=0, fp32_top1=0.9, top1=0.9,
                             drop_pt=upper_pt, met=upper_pt <= 1.0, drop_ci95_pt=0.0) if upper_pt is not None else None)
    return replace(base, family=family, runtime=RuntimeSection(runtime), accuracy_budget=budget,
                   artifact=ArtifactFile(f"m.{family}", 10, family.ljust(64, "0")[:64]))


def document(*rows: BenchRow, batch_sizes=(1,)) -> BenchDocument:
    environment = Environment(python="3.11", cpu=CpuRecord(model="cpu", isa={}), libraries={})
    return BenchDocument(created="now", command="qexport bench", options=RunOptions(batch_sizes=batch_sizes, rounds=3),
                         environment=environment, rows=list(rows))


def manifests(*items: Manifest) -> dict[str, Manifest]:
    return {m.family: m for m in items}


def picked(picks, target: str):
    return next(p for p in picks if p.target == target)


def test_a_clear_leader_is_shipped_alone():
    doc = document(row("a", b1=[1.0, 1.01, 0.99]), row("b", b1=[2.0, 2.02, 1.98]))
    picks, left_out = recommend(doc, manifests(manifest("a"), manifest("b")), only=("latency@1",))
    assert (picks[0].family, picks[0].equals, left_out) == ("a", [], {})
    assert picks[0].value.estimate == pytest.approx(1.0, abs=1e-3)


def test_a_three_way_tie_is_broken_by_size_never_by_the_p50():
    doc = document(row("a", size_mb=3, b1=[1.0, 1.1, 0.9]), row("b", size_mb=1, b1=[1.02, 0.95, 1.08]),
                   row("c", size_mb=2, b1=[0.98, 1.05, 1.0]))
    [pick], _ = recommend(doc, manifests(manifest("a"), manifest("b"), manifest("c")), only=("latency@1",))
    assert (pick.family, pick.equals) == ("b", ["a", "c"])  # b has the highest p50 of the three, and the smallest file
    assert "cannot be told apart from a, c" in pick.line()


def test_an_artifact_over_budget_is_left_out_and_a_wider_budget_takes_it():
    doc = document(row("fast", b1=[0.5, 0.5, 0.5]), row("slow", b1=[2.0, 2.0, 2.0]))
    both = manifests(manifest("fast", upper_pt=2.5), manifest("slow", upper_pt=0.2))
    [pick], left_out = recommend(doc, both, only=("latency@1",))
    assert pick.family == "slow" and left_out == {"fast": "loses up to 2.50 pt (budget 1)"}
    [pick], _ = recommend(doc, both, RecommendOptions(max_accuracy_drop=3.0), only=("latency@1",))
    assert pick.family == "fast"


def test_a_runtime_the_team_cannot_ship_is_left_out_and_an_unknown_one_is_one_sentence():
    doc = document(row("ov", runtime="openvino", b1=[0.5, 0.5, 0.5]), row("ort", b1=[1.0, 1.0, 1.0]))
    both = manifests(manifest("ov", runtime="openvino"), manifest("ort"))
    [pick], left_out = recommend(doc, both, RecommendOptions(runtimes=("onnxruntime",)), only=("latency@1",))
    assert pick.family == "ort" and left_out == {"ov": "runtime openvino not among --runtimes"}
    with pytest.raises(QExportError, match=r"^Unknown runtime 'onnxrt'.*; choose from .*onnxruntime"):
        recommend(doc, both, RecommendOptions(runtimes=("onnxrt",)))


def test_an_unknown_target_names_the_ones_this_bench_answers():
    doc = document(row("a", b1=[1.0, 1.0, 1.0]))
    with pytest.raises(QExportError, match=r"^Unknown target 'latency@32'.*this bench answers latency@1, throughput"):
        recommend(doc, manifests(manifest("a")), only=("latency@32",))


def test_a_file_changed_since_the_bench_is_refused_naming_it():
    doc = document(row("a", b1=[1.0, 1.0, 1.0]))
    changed = replace(manifest("a"), artifact=ArtifactFile("m.a", 10, "f" * 64))
    with pytest.raises(QExportError, match=r"^m\.a changed since bench\.json measured it"):
        recommend(doc, manifests(changed))


def test_nothing_within_budget_names_the_closest_artifact_and_its_drop():
    doc = document(row("a", b1=[1.0, 1.0, 1.0]), row("b", b1=[2.0, 2.0, 2.0]))
    picks, _ = recommend(doc, manifests(manifest("a", upper_pt=4.0), manifest("b", upper_pt=2.5)))
    assert all(p.family is None for p in picks)
    assert "the closest is b, losing up to 2.50 pt" in picks[0].line()


def test_throughput_compares_each_artifact_at_its_own_best_batch():
    # a: 1 ms at batch 1 (1000 img/s), 16 ms at 32 (2000 img/s); b: 10 ms at 32 (3200 img/s)
    doc = document(row("a", b1=[1.0, 1.0, 1.0], b32=[16.0, 16.1, 15.9]),
                   row("b", b1=[2.0, 2.0, 2.0], b32=[10.0, 10.1, 9.9]), batch_sizes=(1, 32))
    [pick], _ = recommend(doc, manifests(manifest("a"), manifest("b")), only=("throughput",))
    assert pick.family == "b" and pick.value.estimate == pytest.approx(3200, rel=1e-3)


def test_cold_start_is_load_plus_first_call():
    doc = document(row("quick-load", load=[20.0, 21.0, 19.0], first=[100.0, 101.0, 99.0], b1=[1.0, 1.0, 1.0]),
                   row("quick-call", load=[60.0, 61.0, 59.0], first=[10.0, 10.5, 9.5], b1=[1.0, 1.0, 1.0]))
    [pick], _ = recommend(doc, manifests(manifest("quick-load"), manifest("quick-call")), only=("cold-start",))
    assert pick.family == "quick-call" and pick.value.estimate == pytest.approx(70.0, rel=1e-2)


def test_size_ships_the_smallest_file():
    doc = document(row("big", size_mb=40, b1=[1.0, 1.0, 1.0]), row("small", size_mb=11, b1=[2.0, 2.0, 2.0]))
    [pick], _ = recommend(doc, manifests(manifest("big"), manifest("small")), only=("size",))
    assert pick.family == "small"


def test_p99_is_shown_only_on_as_many_calls_as_loadgen_s_early_stopping_rule_asks():
    from qexport.commands.benchreport import p99_text
    from qexport.runtimes.stats import min_calls_for_percentile

    assert (min_calls_for_percentile(0.90), min_calls_for_percentile(0.99)) == (64, 662)  # LoadGen's minimums
    few = batch([1.0, 1.0, 1.0])  # 300 calls
    assert p99_text(few) == "n/a (300 calls; p99 needs 662)"
    assert p99_text(replace(few, count=662, p99_ms=1.25)) == "1.250 (662)"


def test_the_pareto_front_keeps_only_artifacts_nothing_beats_on_both_accuracy_and_latency():
    from qexport.commands.recommend import pareto_front

    rows = [replace(row("fast-int8", b1=[0.5, 0.5, 0.5]), build_top1=0.70),
            replace(row("slow-int8", b1=[0.9, 0.9, 0.9]), build_top1=0.69),   # beaten by fast-int8 on both
            replace(row("fp32", b1=[1.5, 1.5, 1.5]), build_top1=0.72),
            replace(row("slow-fp32", b1=[3.0, 3.0, 3.0]), build_top1=0.72)]  # as accurate as fp32, slower
    assert [r.family for r in pareto_front(rows, "1")] == ["fast-int8", "fp32"]
