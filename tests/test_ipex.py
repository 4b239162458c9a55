"""IPEX families and runtime: built, served and benchmarked in the separate torch-2.8 environment.

The per-family contract (load, shape, golden I/O, agreement, coverage, size) runs for the IPEX
families in test_build.py like for every other family; here: what is specific to a runtime that
lives in another interpreter. Without `.venv-ipex` these tests skip with the reason `make test`
recorded when it could not create it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from qexport.exporter import FAMILIES
from qexport.exporter.build import build_families
from qexport.core.errors import RuntimeMissing
from qexport.runtimes import foreign
from qexport.runtimes.harness import BenchOptions, bench_directory
from tests.conftest import built_outcome, make_context

ROOT = Path(__file__).resolve().parents[1]
SETUP_FAILED = ROOT / ".venv-ipex.setup-failed"


@pytest.fixture(scope="module")
def ipex_python() -> str:
    try:
        return foreign.foreign_python("ipex")
    except RuntimeMissing as err:
        reason = SETUP_FAILED.read_text().strip() if SETUP_FAILED.is_file() else str(err)
        pytest.skip(f"IPEX environment unavailable: {reason}")


@pytest.fixture
def no_ipex_env(monkeypatch, tmp_path):
    """Point qexport at an IPEX interpreter that does not exist."""
    monkeypatch.setenv("QEXPORT_IPEX_PYTHON", str(tmp_path / "missing" / "python"))
    foreign.foreign_python.cache_clear()
    yield
    foreign.foreign_python.cache_clear()


def test_main_environment_never_imports_ipex():
    import sys

    assert "intel_extension_for_pytorch" not in sys.modules
    assert not foreign.runs_here("ipex") and foreign.runs_here("torchscript")


def test_missing_environment_skips_build_with_the_fix(no_ipex_env, tiny_data, tiny_checkpoint, tmp_path):
    families = [FAMILIES["ipex-int8"], FAMILIES["torchscript-fp32"]]
    outcomes = {o.family: o for o in build_families(make_context(tiny_data, tiny_checkpoint), families, tmp_path)}
    assert outcomes["ipex-int8"].status == "skipped"
    assert "make setup-ipex" in outcomes["ipex-int8"].reason
    assert outcomes["torchscript-fp32"].status == "built"
    assert not list(tmp_path.glob("*ipex*"))  # nothing half-written


def test_missing_environment_skips_bench_row(built_artifacts, no_ipex_env, tiny_data):
    out, outcomes = built_artifacts
    built_outcome(outcomes, "ipex-int8")
    doc = bench_directory(out, BenchOptions(rounds=1, only=("ipex-int8",), batch_sizes=(1,), min_seconds=0.01, min_count=2,
                                            warmup=1), None)
    (row,) = doc.rows
    assert row.status == "skipped" and "make setup-ipex" in row.reason


def test_checkpoint_format_loads_in_torch_2_8(ipex_python, tiny_checkpoint, tiny_data):
    script = ("import sys, torch; from qexport.training.models import load_model; "
              f"m, meta = load_model(sys.argv[1], 'resnet18', {tiny_data.num_classes}); "
              "print(torch.__version__, meta['model'])")
    done = subprocess.run([ipex_python, "-c", script, str(tiny_checkpoint)], capture_output=True, text=True,
                          env=foreign.child_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.split()[0].startswith("2.8")


@pytest.mark.parametrize("key", ["ipex-int8", "ipex-bf16"])
def test_manifest_names_the_ipex_runtime(ipex_python, built_artifacts, key):
    out, outcomes = built_artifacts
    # one family per case: ipex-bf16 skips on hosts without AVX-512 (see test_hardware.py)
    manifest = built_outcome(outcomes, key).manifest
    runtime = manifest.runtime
    assert runtime.name == "ipex" and runtime.requires["torch"].startswith("==2.8")
    assert runtime.tested_with["intel_extension_for_pytorch"].startswith("2.8.0")
    assert "before torch.jit.load" in runtime.load
    assert manifest.calibration is None or manifest.calibration.split == "train"


def test_ipex_int8_uses_seven_bit_activations_exactly_when_asked(ipex_python):
    """The observer IPEX calibrates with: 0-127 for a target that may lack VNNI, 0-255 otherwise."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from ipex_child import static_qconfig_mapping as m; "
              "print(*(m(r).global_qconfig.activation().quant_max for r in (True, False)))")
    done = subprocess.run([ipex_python, "-c", script, str(ROOT / "exporter")], capture_output=True, text=True,
                          env=foreign.child_env(), timeout=300)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.split()[-2:] == ["127", "255"]


def test_ipex_int8_built_for_the_default_target_records_its_seven_bit_range(ipex_python, built_artifacts):
    _, outcomes = built_artifacts
    manifest = built_outcome(outcomes, "ipex-int8").manifest
    assert manifest.config["activation_range"].startswith("uint8 0-127 (")  # --target-cpu avx2 includes CPUs without VNNI
    assert manifest.config["activation_quant_range"] == [0, 127]  # read off the observer calibration used
    assert manifest.build.options["config"]["target_cpu"] == "avx2"


def test_bench_worker_runs_pinned_in_the_ipex_environment(ipex_python, built_artifacts, tiny_data):
    out, outcomes = built_artifacts
    built_outcome(outcomes, "ipex-int8")
    doc = bench_directory(out, BenchOptions(rounds=1, only=("ipex-int8", "torchscript-fp32"), batch_sizes=(1,),
                                            min_seconds=0.05, min_count=5, warmup=2), tiny_data)
    rows = {r.family: r for r in doc.rows}
    row = rows["ipex-int8"]
    assert row.status == "ok", row.reason
    runtime = row.result.runtime
    assert runtime["runtime"] == "ipex" and runtime["version"].startswith("2.8") and runtime["threads"] == 1
    assert row.result.pinned_cores == doc.options.pinned_cores
    assert row.result.eval.agreement_with_baseline_artifact > 0.65  # int8 on the seconds-trained synthetic model (see test_build.MIN_AGREEMENT)


def test_served_runner_reports_errors_in_one_sentence(ipex_python, tmp_path):
    from qexport import runtimes
    from qexport.core.errors import QExportError

    bogus = tmp_path / "resnet18.int8-ipex.torchscript.pt"
    bogus.write_bytes(b"not a torchscript archive")
    with pytest.raises(QExportError, match="cannot be loaded by ipex"):
        runtimes.load_runner("ipex", bogus)
