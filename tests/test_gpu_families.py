"""The GPU families (TensorRT fp16/int8, ONNX Runtime CUDA fp16, AOTInductor for CUDA): declared like
every family, and decided by one requirement per runtime -- an NVIDIA GPU that torch sees, a CUDA
build of torch and the runtime's package. On a host without them each family is listed, built and
benched as a skip with the same one sentence; the decision is tested with hand-made host facts, so
it needs no GPU. The build on a GPU is checked by scripts/gpu_check.sh and the last test here."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from rich.console import Console
from torch import nn

from qexport import runtimes
from qexport.core.errors import QExportError, RuntimeMissing
from qexport.core.gpu_needs import HostGpu
from qexport.exporter import FAMILIES, BuildContext, BuildOptions, select_families
from qexport.exporter.build import BuildStatus, build_families
from qexport.exporter.registry import declaration_problem

GPU_FAMILIES = ("tensorrt-fp16", "tensorrt-int8", "onnx-cuda-fp16", "pt2e-cuda-fp16")
TENSORRT_NEEDS = "needs an NVIDIA GPU, a CUDA build of torch and `pip install torch-tensorrt==2.14.0`; "
H200 = ("NVIDIA H200",)


def here(key: str) -> str | None:
    """What this host lacks for ``key`` (None: it can build it)."""
    return FAMILIES[key].build_problem()


def tiny_context(**options) -> BuildContext:
    """A build context with no training: one convolution and a linear layer on a few synthetic images
    (GPU families skip before anything runs; on a GPU, they build from it in seconds)."""
    from qexport.training.sources import make_synthetic

    data = make_synthetic(train=64, test=32, image_size=32, seed=0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, bias=True), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, data.num_classes))
    opts = BuildOptions(**{"calibration_samples": 32, "max_accuracy_drop": 100.0, **options})
    return BuildContext("resnet18", model, data, opts, "0" * 64, show_progress=False)


@pytest.mark.parametrize("key", GPU_FAMILIES)
def test_each_gpu_family_is_declared_for_the_gpu_with_its_runtime_requirement(key):
    family = FAMILIES[key]
    assert family.devices == ("cuda",)
    assert runtimes.RUNTIMES[family.runtime].gpu is not None
    # the registry's declaration checks pass (under another key: this one is registered already)
    assert declaration_problem(dataclasses.replace(family, key=f"check-{key}")) is None


@pytest.mark.parametrize("host, missing", [
    (HostGpu((), "13.0", 0, frozenset()), "this host has no NVIDIA GPU"),
    (HostGpu(H200, None, 0, frozenset({"tensorrt-cu13"})), "torch here is a build without CUDA"),
    (HostGpu(H200, "13.0", 0, frozenset({"tensorrt-cu13"})),
     "torch sees none of this host's GPUs (NVIDIA H200): check CUDA_VISIBLE_DEVICES"),
    (HostGpu(H200, "13.0", 1, frozenset({"torch", "onnxruntime"})), "tensorrt-cu13 is not installed"),
], ids=["no-gpu", "cpu-torch", "hidden-gpu", "gpu-without-package"])
def test_the_requirement_names_the_first_missing_piece(host, missing):
    assert FAMILIES["tensorrt-fp16"].build_problem(gpu=host) == TENSORRT_NEEDS + missing


def test_a_host_with_everything_builds_each_gpu_family():
    host = HostGpu(H200, "13.0", 1, frozenset({"torch", "tensorrt-cu13", "onnxruntime-gpu"}))
    assert [key for key in GPU_FAMILIES if FAMILIES[key].build_problem(gpu=host)] == []


def test_onnxruntime_cpu_is_not_onnxruntime_gpu():
    host = HostGpu(H200, "13.0", 1, frozenset({"torch", "onnxruntime"}))
    assert FAMILIES["onnx-cuda-fp16"].build_problem(gpu=host) == (
        "needs an NVIDIA GPU, a CUDA build of torch and `pip install onnxruntime-gpu==1.31.1` after "
        "`pip uninstall onnxruntime` (both install the onnxruntime module); onnxruntime-gpu is not installed")


@pytest.fixture
def cpu_only_host():
    if all(here(key) is None for key in GPU_FAMILIES):
        pytest.skip("this host has an NVIDIA GPU, CUDA and every GPU package: scripts/gpu_check.sh builds them")


@pytest.mark.usefixtures("cpu_only_host")
def test_build_list_shows_each_gpu_family_with_its_one_sentence(monkeypatch):
    from qexport.commands import report

    monkeypatch.setattr(report, "console", Console(width=2000, record=True))
    report.print_families(FAMILIES.values(), "avx2")
    rows = {line.split("│")[1].strip(): line for line in report.console.export_text().splitlines() if "│" in line}
    for key in GPU_FAMILIES:
        if here(key):
            build_here, run_here = [cell.strip() for cell in rows[key].split("│")[5:7]]
            assert build_here == run_here == f"no: {here(key)}"


@pytest.mark.usefixtures("cpu_only_host")
def test_build_all_skips_each_gpu_family_with_its_sentence(tmp_path):
    families = [FAMILIES[key] for key in GPU_FAMILIES if here(key)]
    outcomes = build_families(tiny_context(), families, tmp_path)
    assert [(o.family, o.status, o.reason) for o in outcomes] == [
        (f.key, BuildStatus.SKIPPED, f.build_problem()) for f in families]
    assert json.loads((tmp_path / "index.json").read_text())["artifacts"] == []


@pytest.mark.usefixtures("cpu_only_host")
def test_a_gpu_family_named_on_this_host_is_refused_and_a_prefix_is_not():
    key = next(key for key in GPU_FAMILIES if here(key))
    with pytest.raises(QExportError) as err:
        select_families([key])
    assert str(err.value) == f"{key}: {here(key)}; build it on such a host, or leave it out."
    assert err.value.exit_code == 2
    assert [f.key for f in select_families(["tensorrt"])] == ["tensorrt-fp16", "tensorrt-int8"]


def test_the_int8_onnx_tensorrt_takes_is_symmetric_int8_with_float_bias(tmp_path):
    """tensorrt-int8's Q/DQ export, made on the CPU: TensorRT refuses a non-zero zero point, uint8
    and an int32 bias; the graph still runs in ONNX Runtime and gives the model's classes."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from qexport.exporter.tensorrt_int8 import TensorRtInt8Config, export_qdq

    ctx = tiny_context()
    path = tmp_path / "model.qdq.onnx"
    export_qdq(ctx, ctx.options.config_for(TensorRtInt8Config), path)
    graph = onnx.load(str(path)).graph
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    qdq = [node for node in graph.node if node.op_type in ("QuantizeLinear", "DequantizeLinear")]
    zero_points = [constants[node.input[2]] for node in qdq if len(node.input) > 2]
    assert len(qdq) >= 4 and len(zero_points) == len(qdq)  # activations and weights of the conv and the linear
    assert all(z.dtype == np.int8 and not z.any() for z in zero_points)
    dequantized = [constants[node.input[0]] for node in qdq if node.op_type == "DequantizeLinear" and node.input[0] in constants]
    assert dequantized and all(w.dtype == np.int8 for w in dequantized)  # int8 weights; no int32 bias
    logits = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": ctx.example.numpy()})[0]
    assert logits.shape == (1, ctx.data.num_classes) and np.isfinite(logits).all()


def gpu_manifest(folder: Path, key: str) -> Path:
    """A GPU artifact as a GPU host's build would leave it (the engine's bytes are a stand-in)."""
    from tests.conftest import minimal_manifest

    from qexport.core.fsutil import sha256_file

    family = FAMILIES[key]
    artifact = folder / family.filename("resnet18")
    artifact.write_bytes(b"an engine built elsewhere")
    manifest = minimal_manifest(artifact.name, family=key, format=family.format, precision=str(family.precision),
                                devices=["cuda"])
    manifest["artifact"] = {**manifest["artifact"], "size_bytes": artifact.stat().st_size,
                            "sha256": sha256_file(artifact)}
    manifest["runtime"] = {**manifest["runtime"], "name": family.runtime}
    manifest_file = folder / f"{artifact.name}.manifest.json"
    manifest_file.write_text(json.dumps(manifest))
    return manifest_file


@pytest.mark.usefixtures("cpu_only_host")
@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_bench_skips_a_gpu_artifact_with_the_sentence(tmp_path, device):
    from qexport.core.artifact_files import read_manifest
    from qexport.runtimes.bench_options import BenchOptions
    from qexport.runtimes.harness import check_row

    key = next(key for key in GPU_FAMILIES if here(key))
    manifest_file = gpu_manifest(tmp_path, key)
    row = check_row(manifest_file, read_manifest(manifest_file), BenchOptions(device=device))
    assert (row.status, row.reason) == ("skipped", here(key))


@pytest.mark.usefixtures("cpu_only_host")
def test_loading_a_gpu_artifact_here_is_one_sentence_before_any_import(tmp_path):
    key = next(key for key in GPU_FAMILIES if here(key))
    runtime = FAMILIES[key].runtime
    with pytest.raises(RuntimeMissing) as err:
        runtimes.load_runner(runtime, tmp_path / "x.engine")
    assert str(err.value) == f"Runtime {runtime!r} {here(key)}."


def test_the_gpu_families_build_and_measure_on_this_gpu(tmp_path):
    """Needs an NVIDIA GPU: every GPU family this host can build is built, measured in its runtime
    and written with its manifest (scripts/gpu_check.sh runs this file on the device)."""
    families = [FAMILIES[key] for key in GPU_FAMILIES if here(key) is None]
    if not families:
        pytest.skip(f"needs an NVIDIA GPU: {here('pt2e-cuda-fp16')}")
    outcomes = build_families(tiny_context(), families, tmp_path)
    assert {o.family: o.status for o in outcomes} == {f.key: BuildStatus.BUILT for f in families}, \
        [o.reason for o in outcomes]
    for outcome in outcomes:
        assert outcome.manifest.devices == ["cuda"]
        if outcome.manifest.precision == "fp16":  # the untrained model's margins are too thin to hold int8 to this
            assert outcome.manifest.evaluation.top1_agreement_with_eager >= 0.9, outcome.family
