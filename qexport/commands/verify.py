"""`qexport verify`: is this artifact the one its manifest describes, and does it behave so here?

Checks, per artifact: sha256, the installed runtime's version against the manifest's range,
loading in that runtime, and the golden inputs' outputs within the per-precision tolerance.
Imports only what the artifact's runtime needs: an ONNX-only check never imports torch.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qexport.core.errors import QExportError
from qexport.core.fsutil import sha256_file
from qexport.core.artifact_files import (artifact_file, artifact_problem, golden_gap, golden_path, manifest_path,
                                         read_manifest)
from qexport.core.cpu_needs import host_problem_for
from qexport.core.index import discover
from qexport.core.manifest import Manifest
from qexport.runtimes.foreign import is_foreign, runs_here


@dataclass
class Check:
    file: str
    family: str
    runtime: str
    passed: bool
    detail: str
    max_abs_diff: float | None = None


def targets(path: Path) -> list[tuple[Path, Manifest]]:
    """A folder, an artifact file or a manifest file → (manifest path, manifest) pairs."""
    path = Path(path)
    if path.is_dir():
        return discover(path)
    manifest_file = path if path.name.endswith(".manifest.json") else manifest_path(path)
    if not manifest_file.is_file():
        raise QExportError(f"{path} has no manifest beside it ({manifest_file.name}); verify needs the manifest qexport wrote.")
    return [(manifest_file, read_manifest(manifest_file))]


def local_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def version_problem(requires: dict, installed_version=local_version) -> str | None:
    """None when every required package is installed within range, else what is wrong.

    ``installed_version`` answers for the environment the artifact runs in (another
    interpreter's, for IPEX).
    """
    from packaging.specifiers import InvalidSpecifier, SpecifierSet
    from packaging.version import Version

    for package, spec in (requires or {}).items():
        installed = installed_version(package)
        if installed is None:
            return f"{package} is not installed (needs {package}{spec})"
        try:
            if Version(installed.split("+")[0]) not in SpecifierSet(spec):
                return f"{package} {installed} is outside the manifest's range {spec}"
        except InvalidSpecifier:
            return f"manifest has an invalid version range {spec!r} for {package}"
    return None


def verify_one(manifest_file: Path, manifest: Manifest) -> Check:
    from qexport import runtimes

    file, family, runtime = manifest.artifact.file, manifest.family, manifest.runtime.name

    def fail(detail: str) -> Check:
        return Check(file, family, runtime, False, detail)

    artifact = artifact_file(manifest_file, manifest)
    problem = artifact_problem(manifest_file, manifest)
    if problem:
        return fail(problem)
    problem = host_problem_for(manifest)  # before loading: never a SIGILL
    if problem:
        return fail(problem)
    requires = manifest.runtime.requires
    foreign = is_foreign(runtime) and not runs_here(runtime)
    problem = None if foreign else version_problem(requires)
    if problem:
        return fail(problem)
    golden_file = golden_path(artifact)
    if not golden_file.is_file() or sha256_file(golden_file) != manifest.golden.sha256:
        return fail("golden data is missing or does not match the manifest")
    try:
        runner = runtimes.load_runner(runtime, artifact, hints=manifest.load_hints)
        if foreign:  # the versions that matter are those of the runtime's own environment
            problem = version_problem(requires, runner.installed_versions().get)
            if problem:
                return fail(problem)
        with np.load(golden_file) as golden:
            expected, actual = golden["outputs"], runner.predict(golden["inputs"])
            raw = raw_image_problem(manifest, golden, runner) if manifest.golden.raw_image else None
    except QExportError as err:
        return fail(str(err))
    if actual.shape != expected.shape:
        return fail(f"output shape {actual.shape} differs from the golden {expected.shape}")
    atol = manifest.golden.atol
    ok, diff = golden_gap(actual, expected, atol)
    if ok and raw:
        return Check(file, family, runtime, False, raw, diff)
    detail = f"golden outputs match (max |Δ| {diff:.2e} ≤ atol {atol})" if ok else \
        f"golden outputs differ: max |Δ| {diff:.3g} > atol {atol}"
    if ok and manifest.golden.raw_image:
        detail += "; the raw image, prepared as the manifest says, gives the golden input and output"
    if ok and manifest.runtime_settings:
        problem, said = tuned_settings_check(manifest_file, manifest)
        if problem:
            return Check(file, family, runtime, False, problem, diff)
        detail += f"; {said}"
    return Check(file, family, runtime, ok, detail, diff)


def tuned_settings_check(manifest_file: Path, manifest: Manifest) -> tuple[str | None, str]:
    """The golden outputs again under each runtime setting `qexport tune` recorded for this host's
    CPU class, each in a fresh worker; (why it fails, what was checked). Settings recorded for
    another class are not applied, and the check says so."""
    from qexport.core.hardware import host_cpu
    from qexport.runtimes.harness import WorkerFailure, golden_in_worker
    from qexport.runtimes.settings import how_to_apply, recorded_settings

    applied = recorded_settings(manifest, host_cpu(), sorted({t.batch_size for t in manifest.runtime_settings}))
    checked = []
    for chosen, _ in applied.groups():
        if not chosen:
            continue
        how = " ".join(how_to_apply(manifest.runtime.name, chosen))
        outcome = golden_in_worker(manifest_file, manifest, chosen)
        if isinstance(outcome, WorkerFailure):
            return f"under its tuned settings ({how}) it fails: {outcome.reason}", ""
        if not outcome.golden_ok:
            return (f"under its tuned settings ({how}) golden outputs differ: max |Δ| {outcome.golden_max_diff:.3g} > "
                    f"atol {manifest.golden.atol}"), ""
        checked.append(how)
    if checked:
        return None, "also under its tuned settings: " + "; ".join(checked)
    return None, applied.note or "its tuned settings are the defaults here"


def raw_image_problem(manifest: Manifest, golden, runner) -> str | None:
    """The path a deployment team follows, checked end to end: the golden raw image file,
    prepared by the manifest's preprocessing alone, must give the first golden input and, in the
    runtime, its output. None when it does."""
    from qexport.core.preprocessing import prepare_file

    if "raw_image" not in golden.files:
        return "the golden data lacks the raw image its manifest promises"
    prepared = prepare_file(golden["raw_image"].tobytes(), manifest.input.contract)
    first = golden["inputs"][:1]
    if prepared.shape != first.shape:
        return f"the raw image prepared as the manifest says has shape {prepared.shape}, the golden input {first.shape}"
    gap = float(np.abs(prepared - first).max())
    if gap > 1e-4:
        return f"the raw image prepared as the manifest says differs from the golden input (max |Δ| {gap:.3g})"
    if manifest.input.fixed_batch not in (None, 1):
        return None  # a program of another fixed batch: the input check above is what can be checked
    output = runner.predict(prepared)
    if not golden_gap(output, golden["outputs"][:1], manifest.golden.atol)[0]:
        return "the raw image's output in this runtime differs from the golden output"
    return None


def verify_path(path: Path) -> list[Check]:
    return [verify_one(manifest_file, manifest) for manifest_file, manifest in targets(path)]
