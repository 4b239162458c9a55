"""Runtime settings and `qexport tune`: the decision on hand-made rounds with known answers, the
settings' declarations and their bad input, which recorded settings a host applies, and one real
tune of a real artifact in its real runtime."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qexport.core.errors import QExportError
from qexport.core.hardware import HostCpu
from qexport.core.manifest import Manifest, TunedSettings
from qexport.runtimes.settings import (check_settings, environment_for, how_to_apply, isa_caps_below_top,
                                       one_change_candidates, recorded_settings)
from qexport.runtimes.tuning import Measured, TrialVerdict, choose, judge, with_records
from tests.conftest import built_outcome, minimal_manifest

AVX2 = HostCpu("AVX2 host", frozenset({"sse4_1", "avx2"}))
AMX = HostCpu("AMX host", frozenset({"sse4_1", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16"}))
CAP = {"onednn_max_cpu_isa": "AVX512_CORE_VNNI"}


def rounds(defaults: list[float], candidate: list[float], batch: int = 1) -> tuple[Measured, Measured]:
    return Measured({}, {batch: defaults}), Measured(dict(CAP), {batch: candidate})


def test_a_candidate_twice_as_fast_in_every_round_is_kept_with_a_speedup_of_two():
    defaults, faster = rounds([2.0, 2.2, 1.8], [1.0, 1.1, 0.9])
    trial = judge(defaults, faster, 1)
    assert trial.verdict is TrialVerdict.KEPT
    assert trial.speedup.estimate == pytest.approx(2.0) and trial.speedup.low == pytest.approx(2.0)


def test_a_setting_that_makes_an_artifact_eight_times_slower_is_never_kept():
    """The pt2e-int8 case: capping the ISA below what its package was compiled for made it 8×
    slower. The defaults stay, and the trial says it was slower (1/8 = 0.125 per round)."""
    defaults, slower = rounds([1.0, 1.1, 0.9], [8.0, 8.8, 7.2])
    choice = choose(defaults, [slower], 1)
    assert choice.settings == {} and choice.speedup is None
    assert choice.trials[0].verdict is TrialVerdict.SLOWER
    assert choice.trials[0].speedup.estimate == pytest.approx(0.125)


def test_a_candidate_faster_in_some_rounds_and_slower_in_others_is_a_tie_and_the_defaults_stay():
    defaults, mixed = rounds([1.0, 1.0, 1.0], [0.8, 1.25, 1.0])  # ratios 1.25, 0.8, 1: geometric mean 1
    choice = choose(defaults, [mixed], 1)
    assert choice.settings == {}
    assert choice.trials[0].verdict is TrialVerdict.TIE
    assert choice.trials[0].speedup.estimate == pytest.approx(1.0)


def test_one_round_gives_no_interval_so_even_a_large_gain_is_not_kept():
    defaults, faster = rounds([2.0], [1.0])
    assert judge(defaults, faster, 1).verdict is TrialVerdict.TIE


def test_of_two_kept_candidates_the_one_with_the_larger_paired_speedup_wins():
    defaults = Measured({}, {1: [3.0, 3.0, 3.0]})
    a = Measured({"performance_hint": "THROUGHPUT"}, {1: [2.0, 2.0, 2.0]})  # 1.5×
    b = Measured(dict(CAP), {1: [1.5, 1.5, 1.5]})                           # 2×
    choice = choose(defaults, [a, b], 1)
    assert choice.settings == CAP and choice.speedup.estimate == pytest.approx(2.0)


def test_the_choice_is_made_per_batch_size():
    """AMX off wins at batch 1 and loses at batch 32 (the AMX host's measurement): each batch keeps its own."""
    defaults = Measured({}, {1: [1.0, 1.0, 1.0], 32: [10.0, 10.0, 10.0]})
    capped = Measured(dict(CAP), {1: [0.5, 0.5, 0.5], 32: [15.0, 15.0, 15.0]})
    assert choose(defaults, [capped], 1).settings == CAP
    assert choose(defaults, [capped], 32).settings == {}


def test_a_rejected_candidate_is_named_with_its_reason_and_never_kept():
    defaults = Measured({}, {1: [2.0, 2.0]})
    broken = Measured(dict(CAP), {1: [1.0]}, problem="changes results beyond the golden tolerance")
    choice = choose(defaults, [broken], 1)
    assert choice.settings == {}
    assert choice.trials[0].verdict is TrialVerdict.REJECTED and "golden" in choice.trials[0].reason


def test_outputs_beyond_the_golden_tolerance_reject_the_candidate_naming_the_difference():
    from qexport.core.manifest import Manifest
    from qexport.runtimes.results import RoundResult
    from qexport.runtimes.tuning import after_round

    manifest = Manifest.from_dict(minimal_manifest())  # golden atol 1e-3
    outcome = RoundResult(load_ms=1.0, peak_rss_mb=1.0, golden_ok=False, golden_max_diff=0.25)
    rejected = after_round(Measured(dict(CAP)), outcome, manifest, failed=False)
    assert rejected.problem == "changes results beyond the golden tolerance (max |Δ| 0.25 > atol 0.001)"


def test_the_isa_caps_tried_are_the_two_rungs_below_the_hosts_best():
    assert isa_caps_below_top(AMX) == ("AVX512_CORE_BF16", "AVX512_CORE_VNNI")
    assert isa_caps_below_top(AVX2) == ("SSE41",)


def test_bf16_precision_is_tried_only_where_the_cpu_has_bf16():
    assert {"inference_precision": "bf16"} in one_change_candidates("openvino", AMX)
    assert {"inference_precision": "bf16"} not in one_change_candidates("openvino", AVX2)


def test_an_environment_setting_becomes_its_variable_and_an_api_setting_its_call():
    assert environment_for("openvino", {**CAP, "performance_hint": "THROUGHPUT"}) == {
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"}
    assert how_to_apply("openvino", {**CAP, "performance_hint": "THROUGHPUT"}) == [
        "ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI", 'core.compile_model(model, "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})']
    assert environment_for("torchscript", {"onednn_max_cpu_isa": "DEFAULT"}) == {}  # the default sets nothing


def test_an_unknown_setting_or_value_is_one_sentence_naming_the_runtime_and_the_known_ones():
    with pytest.raises(QExportError, match=r"onnxruntime has no setting 'graph_level' \(did you mean "
                                           r"'graph_optimization_level'\?\); its settings: graph_optimization_level"):
        check_settings("onnxruntime", {"graph_level": "ORT_ENABLE_ALL"})
    with pytest.raises(QExportError, match="onnxruntime setting execution_mode does not take 'FAST'; known values: "
                                           "ORT_SEQUENTIAL, ORT_PARALLEL."):
        check_settings("onnxruntime", {"execution_mode": "FAST"})


def tuned_manifest(*records: TunedSettings) -> Manifest:
    manifest = Manifest.from_dict(minimal_manifest(runtime={"name": "torchscript"}))
    return with_records(manifest, list(records), "")


def test_settings_tuned_on_another_cpu_class_are_not_applied_and_the_note_says_why():
    manifest = tuned_manifest(TunedSettings(AMX.isa_line(), 1, dict(CAP), 1.9, 1.8, 2.0, 5))
    applied = recorded_settings(manifest, AVX2, [1, 32])
    assert applied.by_batch == {1: {}, 32: {}}
    assert applied.note.startswith(f"settings tuned on {AMX.isa_line()} not applied: this host is AVX2")


def test_settings_tuned_on_this_class_apply_per_batch_and_split_the_workers():
    manifest = tuned_manifest(TunedSettings(AMX.isa_line(), 1, dict(CAP), 1.9, 1.8, 2.0, 5),
                              TunedSettings(AMX.isa_line(), 32, {}, 1.0, None, None, 5))
    applied = recorded_settings(manifest, AMX, [1, 32, 128])
    assert applied.by_batch == {1: CAP, 32: {}, 128: {}}
    assert applied.groups() == [(CAP, [1]), ({}, [32, 128])]
    assert "batch 1: ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI; batch 32: defaults; batch 128: defaults (not tuned)" \
        in applied.note


def test_a_recorded_setting_this_version_does_not_know_falls_back_to_the_defaults_without_failing():
    manifest = tuned_manifest(TunedSettings(AVX2.isa_line(), 1, {"turbo": "on"}, 1.2, 1.1, 1.3, 5))
    applied = recorded_settings(manifest, AVX2, [1])
    assert applied.by_batch == {1: {}} and "recorded settings not applied" in applied.note and "turbo" in applied.note


def test_a_new_tune_replaces_only_its_own_cpu_class_records():
    old_amx = TunedSettings(AMX.isa_line(), 1, dict(CAP), 1.9, 1.8, 2.0, 5)
    old_avx2 = TunedSettings(AVX2.isa_line(), 1, {}, 1.0, None, None, 5)
    new_avx2 = TunedSettings(AVX2.isa_line(), 1, {"onednn_max_cpu_isa": "SSE41"}, 1.1, 1.05, 1.2, 5)
    updated = with_records(tuned_manifest(old_amx, old_avx2), [new_avx2], AVX2.isa_line())
    assert updated.runtime_settings == [old_amx, new_avx2]


def test_a_round_split_across_settings_keeps_the_first_parts_load_and_every_batch():
    from qexport.runtimes.figures import merge_parts
    from qexport.runtimes.results import RoundBatch, RoundResult

    def batch(p50: float) -> RoundBatch:
        return RoundBatch(count=10, min_ms=p50, p50_ms=p50, p90_ms=p50, p99_ms=p50, mean_ms=p50, std_ms=0.0,
                          max_ms=p50, throughput_ips=1.0)

    first = RoundResult(load_ms=12.0, peak_rss_mb=100.0, first_inference_ms=3.0, batches={"1": batch(1.0)})
    second = RoundResult(load_ms=50.0, peak_rss_mb=300.0, first_inference_ms=9.0, batches={"32": batch(20.0)})
    merged = merge_parts([first, second])
    assert (merged.load_ms, merged.first_inference_ms, merged.peak_rss_mb) == (12.0, 3.0, 300.0)
    assert {b: s.p50_ms for b, s in merged.batches.items()} == {"1": 1.0, "32": 20.0}


@pytest.mark.integration
def test_tune_measures_a_real_artifact_records_its_choice_and_bench_applies_it(built_artifacts, tmp_path):
    """ONNX Runtime's settings on the tiny model's fp32 artifact, two rounds: every candidate gets
    a verdict, the manifest records a choice per batch for this host's class, and a bench of the
    folder runs under it and says so."""
    from qexport.core.artifact_files import read_manifest
    from qexport.core.hardware import host_cpu
    from tests.conftest import copy_artifacts, run_cli

    source, outcomes = built_artifacts
    name = Path(built_outcome(outcomes, "onnx-fp32").file).name
    folder = copy_artifacts(source, tmp_path / "a", [name])
    made = run_cli("tune", str(folder), "--rounds", "2", "--min-seconds", "0.05", "--batch-sizes", "1,4")
    assert made.returncode == 0, made.stdout + made.stderr
    doc = json.loads((folder / "tune.json").read_text())
    assert doc["cpu_class"] == host_cpu().isa_line()
    verdicts = {(t["batch_size"], json.dumps(t["settings"])): t["verdict"] for row in doc["rows"] for t in row["trials"]}
    assert len(verdicts) == 2 * len(one_change_candidates("onnxruntime", host_cpu()))
    records = read_manifest(folder / (name + ".manifest.json")).runtime_settings
    assert sorted(r.batch_size for r in records) == [1, 4] and {r.cpu_class for r in records} == {host_cpu().isa_line()}
    benched = run_cli("bench", str(folder), "--rounds", "1", "--min-seconds", "0.05", "--batch-sizes", "1,4",
                      "--no-accuracy")
    assert benched.returncode == 0, benched.stdout + benched.stderr
    row = json.loads((folder / "bench.json").read_text())["rows"][0]
    assert any(note.startswith(f"tuned settings for {host_cpu().isa_line()}") for note in row["notes"])
    assert row["settings"] == {str(r.batch_size): r.settings for r in records if r.settings}


@pytest.mark.integration
def test_verify_checks_the_golden_outputs_again_under_the_settings_recorded_for_this_cpu(built_artifacts, tmp_path):
    from qexport.core.artifact_files import read_manifest
    from qexport.core.documents import to_json
    from qexport.core.fsutil import atomic_write_json
    from qexport.core.hardware import host_cpu
    from tests.conftest import copy_artifacts, run_cli

    source, outcomes = built_artifacts
    name = Path(built_outcome(outcomes, "onnx-fp32").file).name
    folder = copy_artifacts(source, tmp_path / "a", [name])
    manifest_file = folder / (name + ".manifest.json")
    basic = {"graph_optimization_level": "ORT_ENABLE_BASIC"}
    tuned = with_records(read_manifest(manifest_file), [TunedSettings(host_cpu().isa_line(), 1, basic, 1.2, 1.1, 1.3, 3)],
                         host_cpu().isa_line())
    atomic_write_json(manifest_file, to_json(tuned))
    checked = run_cli("verify", str(folder))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "also under its tuned settings: options.graph_optimization_level = " \
           "ort.GraphOptimizationLevel.ORT_ENABLE_BASIC" in " ".join(checked.stdout.split())


def test_the_model_card_gives_tuned_settings_as_the_exact_variable_with_class_batch_and_interval():
    from qexport.commands.pack import settings_section

    manifest = tuned_manifest(TunedSettings(AMX.isa_line(), 1, dict(CAP), 1.9, 1.8, 2.05, 5),
                              TunedSettings(AMX.isa_line(), 32, {}, 1.0, None, None, 5))
    lines = settings_section([manifest])
    assert f"| resnet18.fp32.onnx | {AMX.isa_line()} | 1 | `ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI` | 1.90× [1.80, 2.05] |" in lines
    assert f"| resnet18.fp32.onnx | {AMX.isa_line()} | 32 | defaults (nothing was faster) | – |" in lines
    assert settings_section([tuned_manifest()]) == []


def test_a_latency_pick_measured_under_tuned_settings_says_to_ship_them():
    from qexport.commands.recommend import Pick, with_settings_note
    from qexport.runtimes.results import BenchDocument, BenchRow

    row = BenchRow("ipex-int8", "m.pt", "torchscript", "int8", "ipex", settings={"1": dict(CAP)})
    doc = BenchDocument.__new__(BenchDocument)
    doc.rows = [row]
    said = with_settings_note(Pick("latency@1", "ipex-int8", None, "ms"), doc)
    assert said.note == "measured with its tuned settings ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI (ship them with it)"
    assert with_settings_note(Pick("latency@32", "ipex-int8", None, "ms"), doc).note == ""


def test_try_keeps_only_the_settings_a_runtime_has_and_checks_their_values():
    from qexport.runtimes.tuning import asked_candidates, check_asked

    asked = [("onednn_max_cpu_isa", "AVX2"), ("performance_hint", "THROUGHPUT")]
    assert asked_candidates("torchscript", asked) == [{"onednn_max_cpu_isa": "AVX2"}]
    assert asked_candidates("openvino", asked) == [{"onednn_max_cpu_isa": "AVX2"}, {"performance_hint": "THROUGHPUT"}]
    with pytest.raises(QExportError, match="openvino setting performance_hint does not take 'FASTEST'; known values: "
                                           "LATENCY, THROUGHPUT."):
        asked_candidates("openvino", [("performance_hint", "FASTEST")])
    with pytest.raises(QExportError, match=r"--try turbo: no runtime in this folder \(onnxruntime\) has that setting; "
                                           r"theirs: execution_mode, graph_optimization_level, intra_op_allow_spinning."):
        check_asked([("turbo", "on")], {"onnxruntime"})


def test_a_rounds_p50s_are_appended_per_batch_in_round_order():
    from qexport.runtimes.results import RoundBatch, RoundResult
    from qexport.runtimes.tuning import after_round

    def round_of(p50_1: float, p50_32: float) -> RoundResult:
        stats = dict(count=10, min_ms=0.0, p90_ms=0.0, p99_ms=0.0, mean_ms=0.0, std_ms=0.0, max_ms=0.0,
                     throughput_ips=1.0)
        return RoundResult(load_ms=1.0, peak_rss_mb=1.0, golden_ok=True, golden_max_diff=0.0,
                           batches={"1": RoundBatch(p50_ms=p50_1, **stats), "32": RoundBatch(p50_ms=p50_32, **stats)})

    manifest = Manifest.from_dict(minimal_manifest())
    measured = after_round(Measured(dict(CAP)), round_of(1.0, 30.0), manifest, failed=False)
    measured = after_round(measured, round_of(1.5, 31.0), manifest, failed=False)
    assert measured.round_p50_ms == {1: [1.0, 1.5], 32: [30.0, 31.0]} and measured.problem == ""


def test_the_manifest_record_keeps_the_kept_speedup_and_its_interval_in_order():
    from qexport.runtimes.stats import Interval
    from qexport.runtimes.tuning import Choice, record

    kept = record(Choice(1, dict(CAP), Interval(1.9, 1.8, 2.05, 5), []), AMX, 5)
    assert (kept.cpu_class, kept.batch_size, kept.settings) == (AMX.isa_line(), 1, CAP)
    assert (kept.speedup, kept.speedup_low, kept.speedup_high, kept.rounds, kept.cpu) == (1.9, 1.8, 2.05, 5, "AMX host")
    defaults = record(Choice(32, {}, None, []), AMX, 5)
    assert (defaults.settings, defaults.speedup, defaults.speedup_low, defaults.speedup_high) == ({}, 1.0, None, None)
