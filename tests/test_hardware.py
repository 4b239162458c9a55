"""Hardware-aware families and portable compiled code.

The decision logic is tested for both CPU classes on whichever host runs the suite, with faked
flag sets (``QEXPORT_FAKE_CPU_FLAGS`` or a :class:`HostCpu` passed in); what really runs comes
from the host. The objdump tests prove what the compiler emitted, with no second machine.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import zipfile

import pytest

from qexport.exporter import FAMILIES, select_families
from qexport.exporter.build import build_families
from qexport.core.errors import QExportError
from qexport.core.hardware import (FAKE_FLAGS_VARIABLE, TARGETS, X86_64_V3, X86_64_V4, HostCpu, host_cpu,
                              native_requirement, resolve_target)
from qexport.core.cpu_needs import host_problem_for
from qexport.core.gpu_needs import HostGpu
from qexport.core.manifest import Manifest
from qexport.runtimes.harness import BenchOptions, bench_directory
from qexport.commands.verify import verify_path
from tests.conftest import built_outcome, copy_artifacts, make_context, minimal_manifest, run_cli

AVX2_HOST = HostCpu("Fake AVX2 EPYC", frozenset(X86_64_V3 | {"sse4_2"}))
AVX512_HOST = HostCpu("Fake AVX-512 Xeon", frozenset(X86_64_V4 | {"avx512_vnni", "avx512_bf16"}))
NO_AVX2_HOST = "sse2 sse4_2 avx"  # an old x86-64 CPU, as cpuinfo flags
AVX2_FLAGS = " ".join(sorted(AVX2_HOST.flags))


def test_isa_class_names_the_strongest_extension():
    assert AVX2_HOST.isa_class() == "AVX2"
    assert AVX512_HOST.isa_class() == "AVX-512 BF16"
    assert "AVX-512F" in AVX512_HOST.labels() and "AVX-512F" not in AVX2_HOST.labels()


def test_ipex_bf16_needs_avx512_or_avx_ne_convert():
    family = FAMILIES["ipex-bf16"]
    problem = family.build_problem(AVX2_HOST)
    assert problem == "needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT; this CPU has AVX2"
    assert family.build_problem(AVX512_HOST) is None
    assert family.build_problem(HostCpu("Fake AVX-NE-CONVERT", AVX2_HOST.flags | {"avx_ne_convert"})) is None
    assert FAMILIES["ipex-int8"].build_problem(AVX2_HOST) is None


def test_every_other_family_builds_on_both_classes():
    gpu = HostGpu(("NVIDIA H200",), "13.0", 1, frozenset({"torch", "tensorrt-cu13", "onnxruntime-gpu"}))  # GPU families too
    for key, family in FAMILIES.items():
        if key != "ipex-bf16":
            assert family.build_problem(AVX2_HOST, gpu) is None and family.build_problem(AVX512_HOST, gpu) is None, key


def test_naming_an_unbuildable_family_is_an_error_but_a_prefix_skips_it():
    with pytest.raises(QExportError, match="ipex-bf16: needs AVX-512"):
        select_families(["ipex-bf16"], cpu=AVX2_HOST)
    assert [f.key for f in select_families(["ipex-bf16"], cpu=AVX512_HOST)] == ["ipex-bf16"]
    assert {f.key for f in select_families(["ipex"], cpu=AVX2_HOST)} == {"ipex-int8", "ipex-bf16"}


def test_target_resolution_both_ways():
    assert resolve_target("avx2", AVX2_HOST).march == "x86-64-v3"
    assert resolve_target("avx512", AVX512_HOST).simdlen == 512
    with pytest.raises(QExportError, match="--target-cpu avx512 needs a build host with AVX-512"):
        resolve_target("avx512", AVX2_HOST)
    with pytest.raises(QExportError, match="Unknown --target-cpu 'avx3'"):
        resolve_target("avx3", AVX512_HOST)
    with pytest.raises(QExportError, match="this CPU has no AVX2"):
        resolve_target("avx2", HostCpu("old", frozenset(NO_AVX2_HOST.split())))


def test_compiled_families_need_what_their_target_allows():
    fp32 = FAMILIES["pt2e-fp32"]
    assert fp32.compiled and fp32.artifact_needs(TARGETS["avx2"]).any_of == (X86_64_V3,)
    assert fp32.artifact_needs(TARGETS["avx512"]).any_of == (X86_64_V4,)
    native = fp32.artifact_needs(TARGETS["native"], AVX512_HOST)
    assert native == native_requirement(AVX512_HOST) and not native.met_by(AVX2_HOST)
    assert FAMILIES["onnx-int8"].artifact_needs(TARGETS["native"], AVX512_HOST) is None  # MLAS dispatches at run time


def fake_pt2_manifest(target: str) -> Manifest:
    needs = FAMILIES["pt2e-fp32"].artifact_needs(TARGETS[target], AVX512_HOST)
    return Manifest.from_dict(minimal_manifest(
        "resnet18.fp32.pt2", requirements={"cpu": needs.to_dict(), "compiled": True, "code": f"compiled for {target}"}))


def test_host_check_refuses_an_avx512_package_on_an_avx2_host(monkeypatch):
    monkeypatch.setenv(FAKE_FLAGS_VARIABLE, AVX2_FLAGS)
    assert host_problem_for(fake_pt2_manifest("avx2")) is None
    problem = host_problem_for(fake_pt2_manifest("avx512"))
    assert problem.startswith("resnet18.fp32.pt2 needs AVX-512 (x86-64-v4) and this CPU")
    assert "avx512f" in problem and "--target-cpu avx2`" in problem and "\n" not in problem
    monkeypatch.setenv(FAKE_FLAGS_VARIABLE, " ".join(AVX512_HOST.flags))
    assert host_problem_for(fake_pt2_manifest("avx512")) is None


def test_manifest_from_before_requirements_still_protects_its_package(monkeypatch):
    legacy = Manifest.from_dict(minimal_manifest(
        "old.pt2", runtime={"name": "aoti", "compiled_with": {"isa": ["AVX2", "AVX-512F", "AVX-512 VNNI"]}}))
    monkeypatch.setenv(FAKE_FLAGS_VARIABLE, AVX2_FLAGS)
    assert "lacks avx512_vnni, avx512f" in host_problem_for(legacy)
    assert host_problem_for(Manifest.from_dict(minimal_manifest("old.onnx"))) is None


def test_fake_flags_change_the_decision_not_the_cpu(monkeypatch):
    monkeypatch.setenv(FAKE_FLAGS_VARIABLE, "avx2,fma")
    cpu = host_cpu()
    assert cpu.faked and cpu.flags == {"avx2", "fma"} and FAKE_FLAGS_VARIABLE in cpu.model


@pytest.mark.e2e
def test_cli_refuses_named_unbuildable_family_and_bad_targets(tmp_path):
    out = tmp_path / "out"
    env = {FAKE_FLAGS_VARIABLE: AVX2_FLAGS}
    for args in (["--only", "ipex-bf16"], ["--only", "pt2e-fp32", "--target-cpu", "avx512"],
                 ["--only", "pt2e-fp32", "--target-cpu", "sse"]):
        done = run_cli("build", *args, "--out", str(out), "--data", "synthetic", env=env)
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert not out.exists() or not any(out.iterdir())  # nothing written


def test_list_says_what_this_host_can_build_and_run():
    done = run_cli("build", "--list", env={FAKE_FLAGS_VARIABLE: AVX2_FLAGS})
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if "ipex-bf16" in line)
    assert "no: needs AVX-512" in line
    assert "build here" in done.stdout and "run here" in done.stdout


def test_build_all_skips_what_this_host_cannot_build(monkeypatch, tiny_data, tiny_checkpoint, tmp_path):
    monkeypatch.setenv(FAKE_FLAGS_VARIABLE, AVX2_FLAGS)
    families = [FAMILIES["ipex-bf16"], FAMILIES["torchscript-fp32"]]
    outcomes = {o.family: o for o in build_families(make_context(tiny_data, tiny_checkpoint), families, tmp_path)}
    assert outcomes["ipex-bf16"].status == "skipped"
    assert outcomes["ipex-bf16"].reason == "needs AVX-512 (BW, VL, DQ) or AVX-NE-CONVERT; this CPU has AVX2"
    assert outcomes["torchscript-fp32"].status == "built"
    assert not list(tmp_path.glob("*bf16*"))


def test_manifests_record_what_the_artifact_needs(built_artifacts):
    _, outcomes = built_artifacts
    pt2 = built_outcome(outcomes, "pt2e-int8").manifest
    assert pt2.requirements.cpu["any_of"] == [sorted(X86_64_V3)]
    assert pt2.requirements.code.startswith("compiled for avx2 (-march=x86-64-v3)")
    assert pt2.config["vector_isa"] == "avx2" and pt2.build.options["config"]["target_cpu"] == "avx2"
    onnx = built_outcome(outcomes, "onnx-int8").manifest
    assert onnx.requirements.cpu is None and "run time" in onnx.requirements.code
    assert onnx.requirements.kernels_on_build_host == host_cpu().isa_class()


def test_verify_and_bench_refuse_an_artifact_this_cpu_cannot_run(built_artifacts, tmp_path, monkeypatch):
    out, outcomes = built_artifacts
    built_outcome(outcomes, "pt2e-fp32")
    folder = copy_artifacts(out, tmp_path, ["resnet18.fp32.pt2"])
    monkeypatch.setenv(FAKE_FLAGS_VARIABLE, NO_AVX2_HOST)
    [check] = verify_path(folder)
    assert not check.passed and "needs AVX2 (x86-64-v3)" in check.detail and "avx2, bmi1" in check.detail
    assert "--target-cpu native` on a host like this one" in check.detail
    doc = bench_directory(folder, BenchOptions(rounds=1, batch_sizes=(1,), min_count=2, min_seconds=0.01, warmup=1), None)
    [row] = doc.rows
    assert row.status == "refused" and "needs AVX2 (x86-64-v3)" in row.reason


def compiled_library_disassembly(package, tmp_path) -> str:
    """objdump -d of the shared library inside an AOTInductor package."""
    if shutil.which("objdump") is None:
        pytest.skip("objdump not found: install binutils (Debian package) to inspect compiled code")
    with zipfile.ZipFile(package) as archive:
        libraries = [name for name in archive.namelist() if name.endswith(".so")]
        assert libraries, "no compiled library in the package"
        archive.extract(libraries[0], tmp_path)
    done = subprocess.run(["objdump", "-d", "--no-show-raw-insn", str(tmp_path / libraries[0])],
                          capture_output=True, text=True, check=True)
    return done.stdout


def test_avx2_package_holds_no_avx512_instruction(built_artifacts, tmp_path):
    out, outcomes = built_artifacts
    built_outcome(outcomes, "pt2e-int8")
    code = compiled_library_disassembly(out / "resnet18.int8.pt2", tmp_path)
    assert "%ymm" in code  # vectorised for AVX2...
    assert "%zmm" not in code  # ...and not one AVX-512 register, whichever host built it


def test_native_package_on_an_avx512_host_holds_avx512(tiny_data, tiny_checkpoint, tmp_path):
    if not host_cpu().has(X86_64_V4):
        pytest.skip(f"this host has {host_cpu().isa_class()}: a native package cannot contain AVX-512 here")
    ctx = make_context(tiny_data, tiny_checkpoint, target_cpu="native")
    [outcome] = build_families(ctx, [FAMILIES["pt2e-fp32"]], tmp_path / "native")
    assert outcome.status == "built", outcome.reason
    code = compiled_library_disassembly(tmp_path / "native" / "resnet18.fp32.pt2", tmp_path)
    assert "%zmm" in code
    manifest = json.loads((tmp_path / "native" / "resnet18.fp32.pt2.manifest.json").read_text())
    assert {"avx512f", "avx512bw"} <= set(manifest["requirements"]["cpu"]["any_of"][0])


@pytest.mark.parametrize("target,flags,reduced", [
    ("avx2", AVX2_FLAGS, True),                     # Haswell, Zen 1-3: no VNNI
    ("avx512", "avx2 avx512f avx512bw avx512vl avx512dq avx512_vnni", True),  # the class includes Skylake-SP
    ("native", "avx2 avx512f avx512_vnni", False),  # this host multiplies int8 without saturating
    ("native", "avx2 avx_vnni", False),
    ("native", AVX2_FLAGS, True),
])
def test_int8_uses_seven_bit_ranges_where_the_target_may_lack_vnni(target, flags, reduced):
    from qexport.core.hardware import TARGETS, HostCpu, int8_may_run_without_vnni

    cpu = HostCpu("test", frozenset(flags.replace(",", " ").split()))
    assert int8_may_run_without_vnni(TARGETS[target], cpu) is reduced


@pytest.mark.parametrize("reduced,quant_max", [(True, 127), (False, 255)])
def test_the_x86_quantizer_takes_the_reduced_range(reduced, quant_max):
    from qexport.exporter.pt2e import x86_quantizer

    config = x86_quantizer(reduced_range=reduced).global_config
    assert config.input_activation.quant_max == quant_max
