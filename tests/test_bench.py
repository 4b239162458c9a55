"""Bench harness: statistics, worker isolation (pinning, threads, crash, hang, missing runtime),
tamper refusal, outputs and compare. Timings are never asserted."""

from __future__ import annotations

import json
import os
import shutil
import stat

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qexport.commands import benchcompare, benchreport
from qexport.core.errors import QExportError
from qexport.runtimes.harness import BenchOptions, bench_directory, run_worker
from qexport.runtimes.results import load_bench
from qexport.runtimes.bench_options import usable_cores
from qexport.runtimes.stats import is_stable, percentile, summarize
from tests.conftest import copy_artifacts

FAST = dict(batch_sizes=(1, 2), min_seconds=0.05, min_count=5, warmup=2, rounds=2)


def test_percentile_matches_numpy_on_known_sequences():
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    for q in (0, 25, 50, 90, 99, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([5.0], 99) == 5.0
    with pytest.raises(ValueError):
        percentile([], 50)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.001, max_value=1e4, allow_nan=False), min_size=1, max_size=200),
       st.floats(min_value=0, max_value=100))
def test_percentile_properties(values, q):
    ordered = sorted(values)
    p = percentile(ordered, q)
    assert ordered[0] - 1e-9 <= p <= ordered[-1] + 1e-9
    assert p == pytest.approx(float(np.percentile(ordered, q)), rel=1e-9, abs=1e-9)
    assert percentile(ordered, min(q + 1, 100)) >= p - 1e-9


def test_summarize_and_stability():
    s = summarize([2.0, 2.0, 4.0, 4.0], batch_size=8)
    assert (s.min_ms, s.p50_ms, s.mean_ms, s.count) == (2.0, 3.0, 3.0, 4)
    assert s.std_ms == pytest.approx(np.std([2, 2, 4, 4], ddof=1))
    assert s.throughput_ips == pytest.approx(8 * 1000 / 3.0)
    assert is_stable([1.0, 1.01], [1.0, 1.0]) and not is_stable([2.0], [1.0])


@pytest.fixture(scope="module")
def small_dir(built_artifacts, tmp_path_factory):
    """A folder with only the two fast fp32 artifacts (and no index: manifests are discovered)."""
    out, _ = built_artifacts
    return copy_artifacts(out, tmp_path_factory.mktemp("bench"), ("resnet18.fp32.torchscript.pt", "resnet18.fp32.onnx"))


def test_bench_pins_one_core_and_one_thread(small_dir, tiny_data):
    doc = bench_directory(small_dir, BenchOptions(**FAST), tiny_data)
    rows = {r.family: r for r in doc.rows}
    assert set(rows) == {"torchscript-fp32", "onnx-fp32"}
    for row in rows.values():
        assert row.status == "ok", row.reason
        result = row.result
        assert result.pinned_cores == [usable_cores()[-1]]
        assert result.runtime["threads"] == 1
        assert result.env_threads["OMP_NUM_THREADS"] == "1"
        assert set(result.batches) == {"1", "2"}
        assert result.batches["1"].count >= 5 * 2 and [w["fixed"] for w in result.batches["1"].warmup] == [2, 2]
        assert result.peak_rss_mb > 0 and result.load_ms > 0 and result.first_inference_ms > 0
        assert result.eval.samples == len(tiny_data.test)
        assert result.eval.agreement_with_baseline_artifact > 0.99
    assert rows["torchscript-fp32"].speedup_vs_fp32["1"] == pytest.approx(1.0)
    assert doc.schema == "qexport.bench" and doc.options.pinned_cores == [usable_cores()[-1]]
    assert doc.environment.libraries["torch"]

    written = benchreport.write_outputs(doc, small_dir / "report")
    names = {p.name for p in written}
    assert {"bench.json", "bench.md", "latency_vs_size.png", "latency_vs_accuracy.png", "speedup.png"} <= names
    for png in (p for p in written if p.suffix == ".png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "pinned cores" in (small_dir / "report" / "bench.md").read_text()

    other = small_dir / "report2"
    other.mkdir()
    (other / "bench.json").write_text(json.dumps(with_onnx_twice_as_slow(doc.to_dict())))
    header, body = benchcompare.compare([small_dir / "report" / "bench.json", other / "bench.json"])
    assert len(body) == 4 and "95 % interval" in header  # 2 artifacts x 2 batch sizes
    changes = {(cells[2], cells[3]): (cells[6], cells[-1]) for cells in body}
    for batch in ("1", "2"):
        assert changes["onnx-fp32", batch][0] == "+100.0 %"
        assert changes["torchscript-fp32", batch] == ("+0.0 %", "~ not significant")


def with_onnx_twice_as_slow(bench: dict) -> dict:
    """The same run with every round of onnx-fp32 taking twice as long: compare must say +100 %."""
    for row in bench["rows"]:
        if row["family"] == "onnx-fp32":
            for stats in row["result"]["batches"].values():
                stats["round_p50_ms"] = [2 * ms for ms in stats["round_p50_ms"]]
    return bench


def test_tampered_artifact_is_refused_unless_allowed(small_dir, tmp_path):
    for path in small_dir.glob("resnet18.fp32.onnx*"):
        shutil.copy(path, tmp_path / path.name)
    artifact = tmp_path / "resnet18.fp32.onnx"
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"\x00")
    doc = bench_directory(tmp_path, BenchOptions(**FAST))
    assert doc.rows[0].status == "refused" and "--allow-modified" in doc.rows[0].reason
    allowed = bench_directory(tmp_path, BenchOptions(**FAST, allow_modified=True))
    assert any("MODIFIED" in n for n in allowed.rows[0].notes)


def test_corrupt_artifact_fails_its_row_only(small_dir, tmp_path):
    for path in small_dir.iterdir():
        if path.is_file():
            shutil.copy(path, tmp_path / path.name)
    broken = tmp_path / "resnet18.fp32.onnx"
    broken.write_bytes(b"garbage")
    doc = bench_directory(tmp_path, BenchOptions(**FAST, allow_modified=True))
    rows = {r.family: r for r in doc.rows}
    assert rows["onnx-fp32"].status == "failed" and "corrupt, truncated" in rows["onnx-fp32"].reason
    assert rows["torchscript-fp32"].status == "ok"


def test_missing_runtime_is_a_skip(small_dir, tmp_path):
    for path in small_dir.glob("resnet18.fp32.onnx*"):
        shutil.copy(path, tmp_path / path.name)
    manifest_file = tmp_path / "resnet18.fp32.onnx.manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["runtime"]["name"] = "tensorrt"
    manifest_file.write_text(json.dumps(manifest))
    row = bench_directory(tmp_path, BenchOptions(**FAST)).rows[0]
    assert row.status == "skipped" and "tensorrt" in row.reason


def _fake_python(tmp_path, body: str):
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_hanging_worker_is_killed_and_reported(tmp_path):
    result = run_worker({}, BenchOptions(**FAST, timeout=1), python=_fake_python(tmp_path, "sleep 60"))
    assert result.status == "failed" and "timed out after 1 s" in result.reason


def test_crashing_worker_is_reported(tmp_path):
    result = run_worker({}, BenchOptions(**FAST), python=_fake_python(tmp_path, "echo dying >&2; kill -SEGV $$"))
    assert result.status == "failed" and "SIGSEGV" in result.reason


def test_cuda_without_gpu_is_a_clear_skip(small_dir):
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("this machine has a GPU")
    doc = bench_directory(small_dir, BenchOptions(**FAST, device="cuda"))
    assert {r.status for r in doc.rows} == {"skipped"}
    assert any("no CUDA GPU" in r.reason for r in doc.rows)


def test_bench_options_validate():
    with pytest.raises(QExportError, match="--threads"):
        BenchOptions(threads=0)
    with pytest.raises(QExportError, match="--cores"):
        BenchOptions(cores=(999,))
    with pytest.raises(QExportError, match="--device"):
        BenchOptions(device="tpu")


def test_compare_refuses_other_json(tmp_path):
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(QExportError, match="not a qexport bench.json"):
        benchcompare.compare([tmp_path / "x.json"])


def write_image_folder(root, size: int = 40, per_class: int = 24) -> None:
    """Two classes (reddish vs bluish) under heavy noise: learnable, not trivially."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for name, colour in (("blue", (20, 20, 160)), ("red", (200, 30, 30))):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                pixels = np.clip(np.array(colour) + rng.normal(0, 160, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")


@pytest.mark.e2e
def test_image_folder_build_is_benched_at_its_own_size(tmp_path):
    """An image-folder build at 24 px is scored at 24 px (not imagefolder's 224 px default), every
    artifact runs (ONNX rejected 224 px inputs with 'Got invalid dimensions'), and the bench's
    accuracy equals the build's; data of another shape is refused in one sentence."""
    from qexport.exporter import FAMILIES
    from qexport.exporter.build import build_families
    from qexport.training.sources import load_dataset
    from qexport.commands.pipeline import train_checkpoint
    from qexport.training.recipe import TrainConfig
    from tests.conftest import make_context, run_cli

    folder, out = tmp_path / "images", tmp_path / "artifacts"
    write_image_folder(folder)
    data = load_dataset("imagefolder", folder, image_size=24)
    checkpoint = train_checkpoint("resnet18", data, TrainConfig(epochs=2, batch_size=16, max_lr=0.05),
                                  tmp_path / "ckpt.pt", show_progress=False)
    families = [FAMILIES["torchscript-fp32"], FAMILIES["onnx-fp32"]]
    outcomes = build_families(make_context(data, checkpoint), families, out)
    assert all(o.status == "built" for o in outcomes), [o.reason for o in outcomes]
    done = run_cli("bench", str(out), "--batch-sizes", "1", "--min-seconds", "0.05", "--min-count", "3",
                   "--warmup", "1", "--rounds", "1")
    assert done.returncode == 0, done.stderr
    rows = {r.family: r for r in load_bench(out / "bench.json").rows}
    for outcome in outcomes:
        row = rows[outcome.family]
        assert row.status == "ok", row.reason
        assert row.result.eval.top1 == pytest.approx(outcome.manifest.evaluation.top1)
    refused = run_cli("bench", str(out), "--data", "synthetic", "--batch-sizes", "1")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "resnet18.fp32.onnx predicts 2 classes (blue, red…) and the evaluation set (synthetic) has 10" in refused.stderr


def test_data_of_another_size_is_refused(small_dir):
    from qexport.training.sources import make_synthetic

    with pytest.raises(QExportError, match=r"takes 32×32 images and the evaluation set \(synthetic\) is 48×48"):
        bench_directory(small_dir, BenchOptions(**FAST), make_synthetic(16, 16, image_size=48))


def test_int8_slower_than_fp32_is_flagged_with_its_causes():
    from qexport.commands.benchreport import slower_int8_lines
    from qexport.runtimes.results import BenchRow
    from qexport.runtimes.stats import Interval

    def row(name: str, precision: str, at_1: float, low: float, high: float, **facts) -> BenchRow:
        return BenchRow(family=name, file=f"{name}.pt", format="aoti", precision=precision, runtime="aoti",
                        speedup_vs_fp32={"1": at_1, "32": 2.4}, speedup_interval={"1": Interval(at_1, low, high, 5)},
                        **facts)

    rows = [row("slow-int8", "int8", 0.75, 0.7, 0.8, float_layers=3, int8_share=0.2),
            row("tied-int8", "int8", 0.97, 0.9, 1.05),      # cannot be told from fp32: not flagged
            row("slow-fp16", "fp16", 0.5, 0.45, 0.55),      # not int8: fp16 on CPU has its own note
            row("fast-int8", "int8", 3.0, 2.8, 3.2)]
    [line] = slower_int8_lines(rows)
    assert line.startswith("slow-int8.pt: int8 is SLOWER than TorchScript fp32 at batch 1 (0.75x)")
    assert "2.40x faster at batch 32" in line and "per-op overhead" in line
    assert "3 layer(s) kept in float" in line and "only 20% of the weights" in line


def test_int8_slower_than_the_fp32_of_its_own_runtime_is_flagged():
    """openvino-int8 slower than openvino-fp32 (paired by round) is a finding even when both beat
    TorchScript fp32; a difference the rounds cannot resolve is not."""
    from types import SimpleNamespace

    from qexport.commands.benchreport import slower_than_own_fp32_lines
    from qexport.runtimes.results import BenchRow

    def row(family: str, precision: str, rounds: dict[str, list[float]], runtime: str = "openvino") -> BenchRow:
        batches = {b: SimpleNamespace(round_medians=lambda r=r: r) for b, r in rounds.items()}
        return BenchRow(family=family, file=f"{family}.xml", format="openvino", precision=precision, runtime=runtime,
                        result=SimpleNamespace(batches=batches))

    rows = [row("openvino-fp32", "fp32", {"1": [1.0, 1.1, 0.9, 1.0, 1.05], "32": [10, 11, 9, 10, 10.5]}),
            row("openvino-int8", "int8", {"1": [1.0, 1.2, 0.8, 1.1, 1.0], "32": [16, 17.5, 14.6, 16.2, 16.9]}),
            row("onnx-int8", "int8", {"1": [0.1] * 5}, runtime="onnxruntime")]  # no onnx fp32 row: nothing to compare
    [line] = slower_than_own_fp32_lines(rows)
    assert line.startswith("openvino-int8.xml: int8 is SLOWER than openvino-fp32 in the same runtime (batch 32: 0.6")
    assert "batch 1" not in line
