"""What a deployment team reads beside each artifact: its manifest, assembled identically for
every family, the folder's ``index.json``, and the up-to-date check that reads manifests back."""

from __future__ import annotations

import platform
import time
from pathlib import Path

from qexport import __version__, runtimes
from qexport.core.documents import parse
from qexport.core.envinfo import cpu_info, git_commit, isa_summary, library_versions
from qexport.core.errors import QExportError
from qexport.exporter.registry import BuildContext, BuildDetails, BuildKey, Family
from qexport.core.fsutil import sha256_file
from qexport.core.fsutil import atomic_write_json
from qexport.core.hardware import host_cpu
from qexport.core.preprocessing import Preprocessing
from qexport.core.artifact_files import artifact_problem, manifest_path, read_manifest
from qexport.core.build_records import AccuracyBudget
from qexport.core.index import Failure, Index, IndexEntry, find_manifests
from qexport.core.manifest import (ArtifactFile, BuildRecord, CompiledWith, DataInfo, Evaluation, FileRecord, GOLDEN_ATOL,
                              Golden, InputSpec, Manifest, ModelInfo, OutputSpec, Requirements, RuntimeSection)


def is_up_to_date(family: Family, final: Path, checkpoint_sha256: str, key: dict, contract: Preprocessing) -> bool:
    """The artifact, its manifest and companions are intact and were built from this checkpoint
    with this key (``Family.up_to_date_key``: shared config, the family's config, its recipe) and this input
    contract (another preprocessing changes calibration and every accuracy). A manifest from before
    typed keys is simply older (rebuilt); a key whose family config has a field the family does not
    declare is refused in one sentence naming the field and the file."""
    manifest_file = manifest_path(final)
    if not final.is_file() or not manifest_file.is_file():
        return False
    try:
        manifest = read_manifest(manifest_file)
        recorded = parse(BuildKey, manifest.build.options, str(manifest_file))
    except QExportError:
        return False
    parse(family.config, recorded.config, f"{manifest_file} (build.options.config)")
    return (manifest.model.checkpoint_sha256 == checkpoint_sha256
            and manifest.build.options == key
            and manifest.input.contract.same_contract(contract)
            and artifact_problem(manifest_file, manifest) is None)


def runtime_section(family: Family, details: BuildDetails) -> RuntimeSection:
    """The manifest's runtime section, from the runtime's declaration (qexport.runtimes.RUNTIMES)."""
    if details.runtime is not None:  # built in another environment, which knows its own versions
        return details.runtime
    declared = runtimes.RUNTIMES[family.runtime]
    versions = library_versions()
    compiled = (CompiledWith(torch=versions["torch"], torchao=versions["torchao"], machine=platform.machine(),
                             cpu=cpu_info()["model"], isa=isa_summary()) if family.compiled else None)
    return RuntimeSection(name=declared.name, requires=declared.requires(versions),
                          tested_with={package: versions.get(package) for package in declared.packages},
                          compiled_with=compiled, quantized_engine=details.quantized_engine)


def make_manifest(ctx: BuildContext, family: Family, final: Path, details: BuildDetails, evaluation: Evaluation,
                  options: dict, seconds: float, golden: Path, budget: AccuracyBudget | None = None) -> Manifest:
    data = ctx.data
    return Manifest(
        artifact=ArtifactFile(**vars(file_record(final)),
                              companions=[file_record(final.with_suffix(suffix)) for suffix in family.companions]),
        family=family.key, format=family.format, precision=family.precision, method=family.method,
        config=details.config, notes=details.notes + ([family.cpu_note] if family.cpu_note else []),
        devices=list(family.devices), requirements=requirements(family, ctx),
        runtime=runtime_section(family, details),
        model=ModelInfo(name=ctx.model_name, num_classes=data.num_classes, checkpoint_sha256=ctx.checkpoint_sha256),
        data=parse(DataInfo, data.describe(), "the data description"), synthetic=data.synthetic,
        calibration=details.calibration, int8_coverage=details.int8_coverage, accuracy_budget=budget,
        input=input_spec(ctx, details.fixed_batch),
        output=OutputSpec(shape=[input_spec(ctx, details.fixed_batch).shape[0], data.num_classes], classes=list(data.classes)),
        delegation=details.delegation,
        evaluation=evaluation,
        golden=Golden(file=golden.name, sha256=sha256_file(golden), samples=ctx.shared.golden_samples,
                      atol=GOLDEN_ATOL[family.precision], raw_image=True),
        build=BuildRecord(seconds=round(seconds, 1), options=options, quantized_engine=details.quantized_engine,
                          fine_tune=details.fine_tune, created=utc_now(), libraries=library_versions(),
                          cpu=cpu_info()["model"], isa=isa_summary(), qexport_version=__version__,
                          git_commit=git_commit(Path(__file__).parent)))


def input_spec(ctx: BuildContext, fixed_batch: int | None) -> InputSpec:
    """NCHW with a dynamic batch, or the one batch a fixed-shape program (ExecuTorch) was exported for."""
    height, width = ctx.data.image_size
    batch: int | str = "batch" if fixed_batch is None else fixed_batch
    contract = ctx.data.contract
    return InputSpec(shape=[batch, 3, height, width], mean=list(contract.mean), std=list(contract.std),
                     dynamic_axes=["batch"] if fixed_batch is None else [], preprocessing=contract,
                     preprocess=contract.describe())


def file_record(path: Path) -> FileRecord:
    return FileRecord(file=path.name, size_bytes=path.stat().st_size, sha256=sha256_file(path))


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def requirements(family: Family, ctx: BuildContext) -> Requirements:
    """What the artifact needs from the CPU it runs on, which verify and bench check before loading.

    Compiled code (AOTInductor) needs what ``--target-cpu`` allowed the compiler to emit. The
    other runtimes (oneDNN in TorchScript/IPEX, MLAS in ONNX Runtime) choose kernels when they
    run, from the CPU they run on: they need only what the family itself needs (IPEX bf16), and
    what they will use is the host's ISA class, recorded here for the build host.
    """
    cpu, target = host_cpu(), ctx.options.target
    needs = family.artifact_needs(target, cpu)
    code = (f"compiled for {target.name} (-march={target.march or 'native'})" if family.compiled
            else "kernels chosen at run time for the CPU it runs on")
    return Requirements(cpu=needs.to_dict() if needs else None, compiled=family.compiled, code=code,
                        kernels_on_build_host=cpu.isa_class())


def write_index(out_dir: Path, model_name: str, failures: list[Failure]) -> Path:
    """index.json lists every valid manifest in the folder plus this run's failures."""
    entries = []
    for manifest_file in find_manifests(out_dir):
        try:
            entries.append(IndexEntry.of(manifest_file, read_manifest(manifest_file)))
        except QExportError:
            continue
    index = Index(model=model_name, created=utc_now(), artifacts=entries, failed=failures)
    path = out_dir / "index.json"
    atomic_write_json(path, index.to_dict())
    return path
