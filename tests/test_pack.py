"""`qexport pack`: deterministic bundles with a model card; tampered artifacts refused."""

from __future__ import annotations

import json
import tarfile
import zipfile

import pytest

from qexport.core.errors import QExportError
from qexport.commands.pack import pack
from qexport.runtimes.results import ArtifactResult, BatchResult, BenchDocument, BenchRow
from qexport.runtimes.bench_options import RunOptions
from qexport.runtimes.environment import CpuRecord, Environment
from tests.conftest import copy_artifacts, run_cli

# One per loader the model card shows; int8 ones, because packing compresses every byte and fp32 weights
# are four times as many (a third of this file's time went to zlib).
NAMES = ("resnet18.int8-static.torchscript.pt", "resnet18.int8.onnx", "resnet18.int8.pt2")


@pytest.fixture
def small_dir(built_artifacts, tmp_path):
    out, _ = built_artifacts
    return copy_artifacts(out, tmp_path / "artifacts", NAMES)


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_same_inputs_give_the_same_bytes(small_dir, tmp_path, suffix):
    first, count = pack(small_dir, tmp_path / f"a{suffix}")
    (small_dir / "resnet18.int8.onnx").touch()  # a newer mtime must not change the bundle
    (tmp_path / "b").mkdir()
    second, _ = pack(small_dir, tmp_path / "b" / f"a{suffix}")
    assert first.read_bytes() == second.read_bytes()
    assert count == 3 * len(NAMES) + 1  # artifact, manifest, golden each + MODEL_CARD.md


def test_bundle_contents_and_model_card(small_dir, tmp_path):
    bundle, _ = pack(small_dir, tmp_path / "release.tar.gz")
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
        card = tar.extractfile("release/MODEL_CARD.md").read().decode()
        assert all(m.mtime == tar.getmember(names[0]).mtime and m.uid == 0 for m in tar.getmembers())
    assert names == sorted(names) and all(n.startswith("release/") for n in names)
    for name in NAMES:
        assert f"release/{name}.manifest.json" in names and name in card
    assert "SYNTHETIC DATA" in card
    assert "torch._inductor.aoti_load_package" in card and "onnxruntime" in card and "torch.jit.load" in card
    assert "Not measured" in card  # no bench.json in this folder


def test_bench_results_travel_with_the_bundle(small_dir, tmp_path):
    stats = BatchResult(count=10, min_ms=6.9, p50_ms=7.0, p90_ms=7.5, p99_ms=7.9, mean_ms=7.1, std_ms=0.2, max_ms=8.0,
                        throughput_ips=142.0)
    bench = BenchDocument(
        created="2026-01-01T00:00:00Z", command="qexport bench",
        options=RunOptions(threads=1, batch_sizes=[1], warmup=1, min_count=1, min_seconds=0.1, device="cpu",
                           pinned_cores=[1]),
        environment=Environment(python="3.11", cpu=CpuRecord("Test CPU", {}), libraries={"torch": "x", "onnxruntime": "y"}),
        rows=[BenchRow(NAMES[0], NAMES[0], "torchscript", "int8", "torchscript", speedup_vs_fp32={"1": 1.0},
                       result=ArtifactResult(load_ms=1.0, peak_rss_mb=1.0, batches={"1": stats})),
              BenchRow(NAMES[1], NAMES[1], "onnx", "int8", "onnxruntime", status="skipped", reason="no runtime")]
    ).to_dict()
    (small_dir / "bench.json").write_text(json.dumps(bench))
    bundle, _ = pack(small_dir, tmp_path / "r.zip")
    with zipfile.ZipFile(bundle) as archive:
        card = archive.read("r/MODEL_CARD.md").decode()
        assert "r/bench.json" in archive.namelist()
        assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in archive.infolist())
    assert "Test CPU" in card and "| 7.000 |" in card and "skipped: no runtime" in card


def test_tampered_artifact_is_refused_and_nothing_written(small_dir, tmp_path):
    with open(small_dir / "resnet18.int8.onnx", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00\x01")
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(QExportError, match="tampered"):
        pack(small_dir, target / "bundle.tar.gz")
    assert list(target.iterdir()) == []


def test_cli_pack_one_sentence_on_bad_name(small_dir, tmp_path):
    done = run_cli("pack", str(small_dir), "-o", str(tmp_path / "bundle.rar"))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "name the bundle" in done.stderr and not list(tmp_path.glob("bundle*"))
    done = run_cli("pack", str(small_dir), "-o", str(tmp_path / "ok.tar.gz"))
    assert done.returncode == 0, done.stderr
    assert tarfile.open(tmp_path / "ok.tar.gz").getmember("ok/MODEL_CARD.md").size > 0


def test_malformed_bench_json_is_one_sentence(small_dir, tmp_path):
    folder = copy_artifacts(small_dir, tmp_path / "a", NAMES[:1])
    (folder / "bench.json").write_text(json.dumps({"schema": "qexport.bench", "schema_version": 2}))
    with pytest.raises(QExportError, match="lacks the required field 'created'"):
        pack(folder, tmp_path / "r.zip")
