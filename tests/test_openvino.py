"""OpenVINO families: an IR is two files (.xml graph + .bin weights) that build, verify, bench and
pack treat as one artifact; the runner records the precision that really ran; a missing runtime
is a skip with the install command."""

from __future__ import annotations

import pytest

from qexport.core.errors import RuntimeMissing
from qexport.core.artifact_files import read_manifest
from qexport.runtimes.harness import BenchOptions, bench_directory
from qexport.commands.verify import verify_path
from tests.conftest import built_outcome, copy_artifacts, run_cli

IR = "resnet18.int8.openvino.xml"


@pytest.fixture
def ir_folder(built_artifacts, tmp_path):
    out, outcomes = built_artifacts
    built_outcome(outcomes, "openvino-int8")
    return copy_artifacts(out, tmp_path / "ir", [IR])


def test_the_weights_file_is_part_of_the_artifact(ir_folder):
    manifest = read_manifest(ir_folder / f"{IR}.manifest.json")
    [weights] = manifest.artifact.companions
    assert weights.file == "resnet18.int8.openvino.bin" and len(weights.sha256) == 64
    assert manifest.artifact.total_size_bytes == manifest.artifact.size_bytes + weights.size_bytes
    assert weights.size_bytes > 50 * manifest.artifact.size_bytes / 100  # the weights, not the graph, are the bulk
    assert all(check.passed for check in verify_path(ir_folder))


def test_missing_or_truncated_weights_are_one_sentence(ir_folder):
    weights = ir_folder / "resnet18.int8.openvino.bin"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    [check] = verify_path(ir_folder)
    assert not check.passed and "resnet18.int8.openvino.bin does not match the sha256" in check.detail
    [row] = bench_directory(ir_folder, BenchOptions(rounds=1, batch_sizes=(1,), min_count=2, min_seconds=0.01)).rows
    assert row.status == "refused" and "openvino.bin" in row.reason
    allowed = bench_directory(ir_folder, BenchOptions(rounds=1, batch_sizes=(1,), min_count=2, min_seconds=0.01,
                                                      allow_modified=True)).rows[0]
    assert allowed.status == "failed" and "cannot be loaded by openvino" in allowed.reason
    weights.unlink()
    done = run_cli("verify", str(ir_folder))
    assert done.returncode == 1 and "resnet18.int8.openvino.bin is missing" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr


def test_runner_reports_the_precision_that_ran(ir_folder):
    from qexport import runtimes

    runner = runtimes.load_runner("openvino", ir_folder / IR, threads=1)
    described = runner.describe()
    assert described["inference_precision"] == "f32" and described["inference_threads"] == 1


def test_missing_openvino_is_a_skip_with_the_install_command():
    from qexport.exporter.openvino import require

    with pytest.raises(RuntimeMissing, match=r"pip install 'qexport\[openvino\]'"):
        require("openvino_that_is_not_installed")


def test_model_card_loads_it_with_openvino_alone(ir_folder, tmp_path):
    from qexport.commands.pack import bundle_members, model_card

    members, manifests = bundle_members(ir_folder)
    assert ir_folder / "resnet18.int8.openvino.bin" in members
    card = model_card(manifests, None)
    snippet = card.split("### openvino")[1].split("```python")[1].split("```")[0]
    assert "import numpy as np, openvino as ov" in snippet and "torch" not in snippet
