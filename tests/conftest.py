"""Shared fixtures: tiny synthetic data for unit tests, the real CIFAR-10 copy for integration."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR = ROOT.parent / "shared" / "datasets" / "cifar10"


# Fixtures whose tests run in another Python: the IPEX environment, or the wheel installed in a scratch venv.
OTHER_ENVIRONMENT_FIXTURES = ("ipex_python", "installed")


def pytest_collection_modifyitems(items) -> None:
    """A test that needs every family built (the fixture ``built_artifacts``, built once per run, minutes)
    is marked ``builds``, and one that runs in another environment is marked ``e2e``, so
    `make test-fast` can leave them out without a hand-kept list."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "built_artifacts" in fixtures:
            item.add_marker(pytest.mark.builds)
        if any(name in fixtures for name in OTHER_ENVIRONMENT_FIXTURES):
            item.add_marker(pytest.mark.e2e)


def cifar_dir() -> Path | None:
    for candidate in (os.environ.get("QEXPORT_DATA_DIR"), SHARED_CIFAR):
        if candidate and (Path(candidate) / "cifar10.npz").is_file():
            return Path(candidate)
    return None


@pytest.fixture(scope="session")
def real_cifar():
    """The provided CIFAR-10 copy; tests that need it skip (with the reason) where it is absent."""
    directory = cifar_dir()
    if directory is None:
        pytest.skip(f"real CIFAR-10 not found: set QEXPORT_DATA_DIR or place cifar10.npz at {SHARED_CIFAR}")
    from qexport.training.sources import load_cifar10

    return load_cifar10(directory, download=False)


# What a command line names to load the same images as ``tiny_data`` (the tiny checkpoint's data).
TINY_DATA_ARGS = ("--data", "synthetic", "--train-samples", "256", "--test-samples", "128")


@pytest.fixture(scope="session")
def tiny_data():
    from qexport.training.sources import make_synthetic

    return make_synthetic(train=256, test=128, image_size=32, seed=0)


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the real console entry point in a subprocess (what a user types)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "qexport.commands.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=full_env, timeout=600)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_data, tmp_path_factory):
    """A resnet18 trained on synthetic data to 100 % test top-1 in seconds: confident logits, so int8
    agreement measures the export, not thin margins (3 epochs reached 62 %, and int8 agreement then
    fell to 0.56 on an AVX2-only host)."""
    from qexport.commands.pipeline import train_checkpoint
    from qexport.training.recipe import TrainConfig

    path = tmp_path_factory.mktemp("ckpt") / "resnet18-synthetic.pt"
    return train_checkpoint("resnet18", tiny_data, TrainConfig(epochs=6, batch_size=32, max_lr=0.05),
                            path, show_progress=False)


def make_context(data, checkpoint, **options):
    from qexport.exporter import BuildOptions
    from qexport.commands.pipeline import build_context

    # The tiny model's int8 twins lose 5-25 top-1 points on thin margins (see test_build.MIN_AGREEMENT):
    # a 1-point budget would send every int8 family into rebuilds. The budget has its own tests.
    opts = BuildOptions(**{"calibration_samples": 64, "max_accuracy_drop": 100.0, **options})
    return build_context("resnet18", data, checkpoint, opts, show_progress=False)


# The families whose tiny-model builds take longest (measured 25-55 s each on a 2-core host; the rest
# 1-17 s), started first so the two build threads finish together instead of one waiting on a straggler.
SLOW_BUILDS = ("ipex-int8", "pt2e-int8-qat", "pt2e-int8", "ipex-bf16", "pt2e-fp32")


@pytest.fixture(scope="session")
def built_artifacts(tiny_data, tiny_checkpoint, tmp_path_factory):
    """Every registered family built once from the tiny checkpoint (shared by the family tests),
    two at a time: the family tests then also prove that concurrent builds cannot spoil each other."""
    from qexport.exporter import FAMILIES
    from qexport.exporter.build import build_families

    out = tmp_path_factory.mktemp("artifacts")
    slowest_first = sorted(FAMILIES.values(), key=lambda f: SLOW_BUILDS.index(f.key) if f.key in SLOW_BUILDS else len(SLOW_BUILDS))
    outcomes = build_families(make_context(tiny_data, tiny_checkpoint), slowest_first, out, jobs=2)
    return out, {o.family: o for o in outcomes}


PRODUCED = ("built", "up-to-date")


def built_outcome(outcomes: dict, key: str):
    """The outcome of ``key``; a family whose runtime environment is absent (IPEX) skips the test
    with the reason the build gave (e.g. 'run `make setup-ipex`') instead of failing or passing."""
    outcome = outcomes[key]
    if outcome.status == "skipped":
        pytest.skip(f"{key}: {outcome.reason}")
    assert outcome.status in PRODUCED, outcome.reason
    return outcome


def copy_artifacts(source: Path, target: Path, names) -> Path:
    """Copy artifacts with their manifest and golden data into ``target`` (no index: discovered)."""
    import shutil

    from qexport.core.artifact_files import read_manifest

    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        files = read_manifest(source / (name + ".manifest.json")).artifact.names  # with companions (.bin)
        for file in [*files, name + ".manifest.json", name + ".golden.npz"]:
            shutil.copy(source / file, target / file)
    return target


def minimal_manifest(file_name: str = "resnet18.fp32.onnx", **sections) -> dict:
    """A complete manifest as JSON (only the fields without a default), with ``sections`` replaced."""
    from qexport.core.documents import to_json
    from qexport.core.manifest import (ArtifactFile, BuildRecord, DataInfo, Evaluation, Golden, InputSpec, Manifest,
                                  ModelInfo, OutputSpec, RuntimeSection)

    classes = ["a", "b"]
    manifest = to_json(Manifest(
        artifact=ArtifactFile(file_name, 10, "0" * 64), family="onnx-fp32", format="onnx", precision="fp32",
        runtime=RuntimeSection("onnxruntime"), model=ModelInfo("resnet18", 2, "1" * 64),
        data=DataInfo("cifar10", classes, [32, 32], [0.5] * 3, [0.25] * 3),
        input=InputSpec(["batch", 3, 32, 32], [0.5] * 3, [0.25] * 3), output=OutputSpec(["batch", 2], classes),
        evaluation=Evaluation(100, 0.9, 0.9, 1.0, 0.0), golden=Golden(file_name + ".golden.npz", "2" * 64, 8, 1e-3),
        build=BuildRecord(1.0, {}, "2026-11-23T00:00:00Z", {}, "cpu", ["AVX2"], "0.1.0")))
    return {**manifest, **sections}
