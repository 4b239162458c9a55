"""`qexport pack`: one reproducible bundle a deployment team can receive and check.

The bundle holds every artifact with its manifest and golden data, the bench results when they
exist, and a generated MODEL_CARD.md. Archives are deterministic -- sorted entries, fixed
timestamps and owners, gzip without a name or time -- so the same inputs give the same bytes
and a bundle's sha256 can be quoted in a release note. Artifacts whose bytes no longer match
their manifest are refused: a bundle must never carry a tampered file.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

from qexport.errors import QExportError
from qexport.fsutil import atomic_path
from qexport.manifest import Manifest, artifact_file, artifact_paths, artifact_problem, discover, golden_path
from qexport.runtimes.results import BenchDocument

EXTRA_FILES = ("index.json", "bench.json", "bench.md", "latency_vs_size.png", "latency_vs_accuracy.png",
               "speedup.png")
FIXED_MTIME = 315532800  # 1980-01-01, the earliest time a zip entry can carry
ZIP_TIME = (1980, 1, 1, 0, 0, 0)



def load_snippet(runtime: str) -> str:
    from qexport.runtimes import RUNTIMES

    return RUNTIMES[runtime].load_snippet if runtime in RUNTIMES else "# see the manifest"


def bundle_members(directory: Path) -> tuple[list[Path], list[Manifest]]:
    """Files to pack (artifact, manifest, golden per entry, then the run's reports) and manifests."""
    members: list[Path] = []
    manifests: list[Manifest] = []
    for manifest_file, manifest in discover(directory):
        artifact = artifact_file(manifest_file, manifest)
        problem = artifact_problem(manifest_file, manifest)
        if problem:
            raise QExportError(f"{problem}; rebuild it before packing -- a bundle never carries a missing or modified "
                               "artifact.")
        members += [*artifact_paths(manifest_file, manifest), manifest_file]
        members += [golden_path(artifact)] if golden_path(artifact).is_file() else []
        manifests.append(manifest)
    members += [directory / name for name in EXTRA_FILES if (directory / name).is_file()]
    return members, manifests


def read_bench(directory: Path) -> BenchDocument | None:
    path = directory / "bench.json"
    if not path.is_file():
        return None
    from qexport.runtimes.results import load_bench

    return load_bench(path)


def model_card(manifests: list[Manifest], bench: BenchDocument | None) -> str:
    first = manifests[0]
    lines = [f"# Model card: {first.model.name} ({first.model.num_classes} classes)", ""]
    if any(m.synthetic for m in manifests):
        lines += ["**SYNTHETIC DATA: every accuracy below is meaningless. Do not deploy.**", ""]
    lines += [
        "## Model and data",
        f"- Architecture: torchvision `{first.model.name}`; source checkpoint sha256 "
        f"`{first.model.checkpoint_sha256}`.",
        f"- Data: {first.data.name} (fingerprint `{first.data.fingerprint or '?'}`); "
        f"classes: {', '.join(first.output.classes)}.",
        f"- Input: float32 NCHW {first.input.shape}, values in [0, 1] then normalised with mean "
        f"{first.input.mean} and std {first.input.std}. Output: logits.",
        "- Calibration (PTQ) and fine-tuning (QAT) used the **train** split; every accuracy is on the **test** split.",
        "",
        "## Artifacts (accuracy measured at build time)",
        "| file | format | precision | runtime | MB | top-1 | Δ vs fp32 (pt) | agreement with fp32 | calibration |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for m in manifests:
        ev = m.evaluation
        lines.append(
            f"| {m.artifact.file} | {m.format} | {m.precision} | {m.runtime.name} | "
            f"{m.artifact.total_size_bytes / 1e6:.1f} | {ev.top1:.2%} | {ev.drop_pt:+.2f} | {ev.top1_agreement_with_fp32:.2%} | "
            f"{m.calibration.describe() if m.calibration else '-'} |")
    lines += ["", *latency_section(bench), "## Loading each artifact (only its runtime, no model code)", ""]
    for runtime in sorted({m.runtime.name for m in manifests}):
        example = next(m for m in manifests if m.runtime.name == runtime)
        lines += [f"### {runtime} (e.g. `{example.artifact.file}`)", "",
                  f"Needs: {', '.join(f'{k}{v}' for k, v in example.runtime.requires.items())}.", "",
                  "```python", load_snippet(runtime).format(file=example.artifact.file),
                  "```", ""]
    lines += ["## Checking the bundle", "",
              "`qexport verify .` checks every file's sha256, the installed runtime version, and the golden outputs.", ""]
    return "\n".join(lines)


def latency_section(bench: BenchDocument | None) -> list[str]:
    if not bench:
        return ["## Latency", "", "Not measured: run `qexport bench DIR` before packing to include it.", ""]
    env, opts = bench.environment, bench.options
    lines = ["## Latency (from bench.json)", "",
             f"{env.cpu.model}; device {opts.device}; pinned cores {opts.pinned_cores}; "
             f"threads {opts.threads}; torch {env.libraries.get('torch')}, onnxruntime "
             f"{env.libraries.get('onnxruntime')}; {bench.created}; command `{bench.command}`.", "",
             "| file | batch | p50 ms | p90 ms | images/s | × vs TorchScript fp32 |", "|---|---:|---:|---:|---:|---:|"]
    for row in bench.rows:
        if not row.measured:
            lines.append(f"| {row.file} | - | {row.status}: {row.reason} | | | |")
            continue
        for batch, stats in row.result.batches.items():
            speedup = row.speedup_vs_fp32.get(batch)
            lines.append(f"| {row.file} | {batch} | {stats.p50_ms:.3f} | {stats.p90_ms:.3f} | "
                         f"{stats.throughput_ips:.0f} | {f'{speedup:.2f}' if speedup else '-'} |")
    return lines + [""]


def pack(directory: Path, output: Path) -> tuple[Path, int]:
    """Write the bundle (``.tar.gz`` or ``.zip``) atomically; returns (path, number of entries)."""
    directory = Path(directory)
    members, manifests = bundle_members(directory)
    card = model_card(manifests, read_bench(directory)).encode()
    entries = sorted([(p.name, p.read_bytes()) for p in members] + [("MODEL_CARD.md", card)])
    root = output.name.removesuffix(".tar.gz").removesuffix(".tgz").removesuffix(".zip")
    with atomic_path(output) as tmp:
        if output.name.endswith(".zip"):
            write_zip(tmp, root, entries)
        elif output.name.endswith((".tar.gz", ".tgz")):
            write_tar_gz(tmp, root, entries)
        else:
            raise QExportError(f"{output.name}: name the bundle *.tar.gz or *.zip.")
    return output, len(entries)


def write_tar_gz(path: Path, root: str, entries: list[tuple[str, bytes]]) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in entries:
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size, info.mtime, info.mode = len(data), FIXED_MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(buffer.getvalue())


def write_zip(path: Path, root: str, entries: list[tuple[str, bytes]]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(f"{root}/{name}", date_time=ZIP_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
