"""The compatibility matrix's cells and text, from hand-made results with known answers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qexport.core.errors import QExportError
from qexport.exporter.build import Outcome
from qexport.core.build_records import AccuracyBudget
from qexport.core.manifest import Evaluation
from qexport.runtimes.results import ArtifactResult, BatchResult, BenchRow, EvalResult
from qexport.runtimes.stats import Interval
from qexport.core.matrix import Cell, Matrix, ModelRow, ZooOptions
from qexport.commands.zoo import built_cell, cells_from_build, check_models
from qexport.commands.zooreport import cell_text, drop_text, markdown, speed_text


def measured_row(family: str, p50: float, ratio: Interval, top1: float = 0.5) -> BenchRow:
    batch = BatchResult(count=10, min_ms=p50, p50_ms=p50, p90_ms=p50, p99_ms=p50, mean_ms=p50, std_ms=0.0,
                        max_ms=p50, throughput_ips=1000 / p50)
    result = ArtifactResult(load_ms=1.0, peak_rss_mb=1.0, eval=EvalResult(samples=100, top1=top1), batches={"1": batch})
    return BenchRow(family, f"m.{family}", "onnx", "int8", "onnxruntime", result=result,
                    speedup_vs_best_fp32={"1": ratio})


class ManifestStandIn:
    """The fields a cell reads from a manifest."""

    def __init__(self, precision: str, budget: AccuracyBudget | None, agreement: float = 0.9):
        self.precision, self.accuracy_budget = precision, budget
        self.evaluation = Evaluation(samples=500, top1=0.5, fp32_reference_top1=0.6,
                                     top1_agreement_with_eager=agreement, max_abs_logit_diff=0.3)


BUDGET = AccuracyBudget(max_drop_pt=1.0, measured_on="validation", samples=500, seed=0, fp32_top1=0.6, top1=0.596,
                        drop_pt=0.4, met=True, drop_ci95_pt=0.7, verdict="met")


def test_a_built_cell_takes_its_drop_from_the_manifest_and_its_speed_from_the_bench():
    row = measured_row("onnx-int8", 0.8, Interval(2.5, 2.1, 3.0, 3), top1=0.58)
    cell = built_cell("timm:x", "onnx-int8", ManifestStandIn("int8", BUDGET, agreement=0.764), row)
    assert (cell.status, cell.precision, cell.int8_drop_pt, cell.int8_drop_ci95_pt) == ("built", "int8", 0.4, 0.7)
    assert cell.agreement_with_eager == 0.764 and cell_text(cell, {}) == "✓ 2.50× drop +0.4 pt ±0.7 agree 76 %"
    assert (cell.p50_ms, cell.top1) == (0.8, 0.58)
    assert (cell.vs_best_fp32, cell.vs_best_fp32_low, cell.vs_best_fp32_high) == (2.5, 2.1, 3.0)


def test_a_built_artifact_the_bench_cannot_run_is_a_failed_cell_saying_so():
    row = replace(measured_row("onnx-int8", 0.8, Interval(2.5, 2.1, 3.0, 3)), status="failed", result=None,
                  reason="worker exited with SIGILL")
    cell = built_cell("timm:x", "onnx-int8", ManifestStandIn("int8", BUDGET), row)
    assert cell.status == "failed" and cell.reason == "built, but the bench could not run it: worker exited with SIGILL"


def test_a_gpu_format_the_bench_skips_on_a_cpu_is_built_and_says_why_it_has_no_speed():
    row = replace(measured_row("onnx-fp16", 0.8, Interval(1.0, 1.0, 1.0, 3)), status="skipped", result=None,
                  reason="fp16 is a GPU format")
    cell = built_cell("timm:x", "onnx-fp16", ManifestStandIn("fp16", None), row)
    assert (cell.status, cell.reason, cell.p50_ms) == ("built", "not measured here: fp16 is a GPU format", None)
    notes: dict[str, int] = {}
    assert cell_text(cell, notes) == "✓ [1]" and notes == {"not measured here: fp16 is a GPU format": 1}


def test_each_build_outcome_becomes_its_own_cell():
    outcomes = [Outcome("ipex-bf16", "skipped", reason="needs AVX-512 BF16"),
                Outcome("pt2e-int8", "failed", reason="pt2e-int8 cannot capture the model: layer 'x'"),
                Outcome("onnx-int8", "built", manifest=ManifestStandIn("int8", BUDGET))]
    rows = {"onnx-int8": measured_row("onnx-int8", 0.8, Interval(2.5, 2.1, 3.0, 3))}
    cells = cells_from_build("timm:x", outcomes, rows)
    assert [(c.family, c.status, c.reason) for c in cells] == [
        ("ipex-bf16", "skipped", "needs AVX-512 BF16"),
        ("pt2e-int8", "failed", "pt2e-int8 cannot capture the model: layer 'x'"),
        ("onnx-int8", "built", "")]


@pytest.mark.parametrize("estimate, low, high, text", [
    (1.82, 1.5, 2.1, "1.82×"),     # faster than the best fp32, and the interval says so
    (0.5, 0.4, 0.6, "0.50×"),      # slower: a ratio below 1, never inverted
    (1.05, 0.9, 1.2, "~1.05×"),    # the interval includes 1: not distinguishable
    (0.95, 0.8, 1.0, "~0.95×"),    # touching 1 counts as including it
    (1.4, None, None, "1.40×"),    # a single round: no interval, no claim of a tie
])
def test_the_speed_text_marks_a_tie_only_when_the_interval_includes_one(estimate, low, high, text):
    assert speed_text(Cell("m", "f", "built", vs_best_fp32=estimate, vs_best_fp32_low=low, vs_best_fp32_high=high)) == text


def test_an_int8_cell_of_a_model_near_chance_says_its_drop_is_not_meaningful():
    cell = Cell("m", "onnx-int8", "built", precision="int8", int8_drop_pt=0.4, int8_drop_ci95_pt=0.7,
                agreement_with_eager=0.02, vs_best_fp32=2.5, vs_best_fp32_low=2.0, vs_best_fp32_high=3.0)
    notes: dict[str, int] = {}
    assert cell_text(cell, notes, fp32_top1=0.39) == "✓ 2.50× drop n/m [1]"
    assert "below 40 % top-1" in next(iter(notes))
    assert cell_text(cell, {}, fp32_top1=0.40) == "✓ 2.50× drop +0.4 pt ±0.7 agree 2 %"  # at the line: shown
    fp32 = Cell("m", "onnx-fp32", "built", precision="fp32", vs_best_fp32=1.0, vs_best_fp32_low=1.0, vs_best_fp32_high=1.0)
    assert cell_text(fp32, {}, fp32_top1=0.1) == "✓ ~1.00×"  # a float cell has no drop to hide


def test_the_drop_text_gives_the_sign_and_the_half_width():
    assert drop_text(Cell("m", "f", "built", int8_drop_pt=0.4, int8_drop_ci95_pt=0.66)) == "drop +0.4 pt ±0.7"
    assert drop_text(Cell("m", "f", "built", int8_drop_pt=-1.25)) == "drop -1.2 pt"
    assert drop_text(Cell("m", "f", "built")) == ""


def test_the_same_reason_shares_one_note_and_another_gets_the_next_number():
    notes: dict[str, int] = {}
    texts = [cell_text(Cell("a", "ipex-bf16", "skipped", "needs AVX-512 BF16"), notes),
             cell_text(Cell("b", "pt2e-int8", "failed", "layer 'gate' branches"), notes),
             cell_text(Cell("c", "ipex-bf16", "skipped", "needs AVX-512 BF16"), notes)]
    assert texts == ["skip [1]", "**fail** [2]", "skip [1]"]
    assert notes == {"needs AVX-512 BF16": 1, "layer 'gate' branches": 2}


def test_reasons_that_differ_only_by_the_architecture_share_one_note():
    notes: dict[str, int] = {}
    texts = [cell_text(Cell("timm:a", "torchscript-int8-static", "skipped", "timm:a has no quantizable twin"), notes),
             cell_text(Cell("timm:b", "torchscript-int8-static", "skipped", "timm:b has no quantizable twin"), notes),
             cell_text(Cell("timm:b", "ipex-int8", "failed", "timm:a's layer branches"), notes)]
    assert texts == ["skip [1]", "skip [1]", "**fail** [2]"]
    assert notes == {"the architecture has no quantizable twin": 1, "timm:a's layer branches": 2}


def test_the_markdown_counts_cells_and_explains_every_note():
    matrix = Matrix(created="2026-12-03", command="qexport zoo", cpu="cpu", isa=["AVX2"], libraries={},
                    options=ZooOptions(models=("timm:a", "timm:b")),
                    models=[ModelRow("timm:a", 32, 0.61), ModelRow("timm:b", 32, None, problem="timm:b does not take 32×32 images")],
                    cells=[Cell("timm:a", "onnx-fp32", "built", vs_best_fp32=1.0, vs_best_fp32_low=1.0, vs_best_fp32_high=1.0),
                           Cell("timm:a", "onnx-int8", "skipped", "needs onnxruntime"),
                           Cell("timm:b", "onnx-fp32", "failed", "timm:b does not take 32×32 images"),
                           Cell("timm:b", "onnx-int8", "failed", "timm:b does not take 32×32 images")])
    text = markdown(matrix)
    assert "2 architectures × 2 families: 1 built, 1 skipped, 2 failed." in text
    assert "| timm:a | 32 | 61.0% | ✓ ~1.00× | skip [1] |" in text
    assert "| timm:b | 32 | – | **fail** [2] | **fail** [2] |" in text
    assert "1. needs onnxruntime" in text and "2. the architecture does not take 32×32 images" in text
    assert "Not reached" not in text and "reused" not in text
    stopped = replace(matrix, options=ZooOptions(models=("timm:a", "timm:b", "timm:c")))
    assert "Not reached (the run was stopped first): timm:c." in markdown(stopped)


def test_the_run_time_says_what_an_earlier_run_had_already_done():
    """A second run reuses checkpoints and up-to-date artifacts: its minutes are not a fresh run's."""
    matrix = Matrix(created="2026-12-03", command="qexport zoo", cpu="cpu", isa=["AVX2"], libraries={},
                    options=ZooOptions(models=("timm:a", "timm:b")), seconds=600.0,
                    models=[ModelRow("timm:a", 32, 0.5, reused_checkpoint=True), ModelRow("timm:b", 32, 0.5)],
                    cells=[Cell("timm:a", "onnx-fp32", "built", reused=True), Cell("timm:a", "onnx-int8", "built", reused=True),
                           Cell("timm:a", "pt2e-int8", "built"), Cell("timm:b", "onnx-fp32", "built")])
    assert ("in 10 min (not counting 1 trainings and 2 builds an earlier run had done: they were up to date "
            "and reused) with `qexport zoo`") in markdown(matrix)


def test_an_up_to_date_artifact_is_a_reused_cell():
    outcomes = [Outcome("onnx-int8", "up-to-date", manifest=ManifestStandIn("int8", BUDGET)),
                Outcome("pt2e-int8", "built", manifest=ManifestStandIn("int8", BUDGET))]
    assert [c.reused for c in cells_from_build("timm:x", outcomes, {})] == [True, False]


def test_an_unknown_architecture_is_refused_before_any_training():
    with pytest.raises(QExportError, match=r"Unknown model 'resnet19' \(did you mean 'resnet18'\?\)"):
        check_models(("resnet18", "resnet19"))


def test_a_budget_missed_on_a_model_near_chance_is_not_a_plain_failure():
    """The refusal carries its drop; below 40 % top-1 the cell says the miss is noise and still
    points at the reason, while at a meaningful accuracy it stays a failure."""
    missed = Cell("m", "ipex-int8", "failed", "ipex-int8 loses 3.40 ± 3.52 top-1 points", precision="int8",
                  int8_drop_pt=3.4, int8_drop_ci95_pt=3.52)
    notes: dict[str, int] = {}
    assert cell_text(missed, notes, fp32_top1=0.378) == "over budget, n/m [1] [2]"
    assert list(notes.values()) == [1, 2] and "below 40 % top-1" in next(iter(notes))
    assert cell_text(missed, {}, fp32_top1=0.60) == "**fail** [1]"
    crashed = Cell("m", "pt2e-int8", "failed", "pt2e-int8 cannot capture the model")  # no drop: a real failure
    assert cell_text(crashed, {}, fp32_top1=0.2) == "**fail** [1]"


def test_a_refused_build_keeps_the_drop_that_refused_it():
    missed = replace(BUDGET, drop_pt=2.5, drop_ci95_pt=1.5, met=False)
    outcomes = [Outcome("onnx-int8", "failed", reason="onnx-int8 loses 2.50 ± 1.50", over_budget=missed),
                Outcome("pt2e-int8", "failed", reason="cannot capture")]
    cells = cells_from_build("timm:x", outcomes, {})
    assert [(c.precision, c.int8_drop_pt, c.int8_drop_ci95_pt) for c in cells] == [("int8", 2.5, 1.5), ("", None, None)]


def test_a_budget_refusal_crosses_a_process_boundary_with_its_budget_and_notes():
    import pickle

    from qexport.core.build_records import OverBudget

    err = OverBudget("onnx-int8 loses 2.50 top-1 points", replace(BUDGET, drop_pt=2.5, met=False))
    err.__notes__ = ["in the build process: ..."]
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.budget.drop_pt, back.__notes__) == (str(err), 2.5, err.__notes__)
    assert isinstance(back, QExportError)
