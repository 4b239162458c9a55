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
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from qexport.core.errors import QExportError
from qexport.core.fsutil import atomic_path
from qexport.core.artifact_files import artifact_file, artifact_paths, artifact_problem, golden_path
from qexport.core.index import discover
from qexport.core.manifest import Manifest
from qexport.runtimes.results import BenchDocument

if TYPE_CHECKING:
    from qexport.core.signing import SigningKey

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


def recommendation_section(manifests: list[Manifest], bench: BenchDocument | None) -> list[str]:
    """The card leads with which file to ship, when the bundle has a bench of these very files."""
    from qexport.commands.benchreport import recommendation_for
    from qexport.core.errors import QExportError

    try:
        lines = recommendation_for(bench, {m.family: m for m in manifests}) if bench is not None else None
    except QExportError as err:  # the bench measured other files: no recommendation rather than a wrong one
        return [f"No recommendation: {err}", ""]
    return ["## Which file to ship", "", *lines, ""] if lines else []


def model_card(manifests: list[Manifest], bench: BenchDocument | None, signed_with: str | None = None) -> str:
    first = manifests[0]
    lines = [f"# Model card: {first.model.name} ({first.model.num_classes} classes)", ""]
    if any(m.synthetic for m in manifests):
        lines += ["**SYNTHETIC DATA: every accuracy below is meaningless. Do not deploy.**", ""]
    lines += recommendation_section(manifests, bench)
    lines += [
        "## Model and data",
        f"- Architecture: torchvision `{first.model.name}`; source checkpoint sha256 "
        f"`{first.model.checkpoint_sha256}`.",
        f"- Data: {first.data.name} (fingerprint `{first.data.fingerprint or '?'}`); "
        f"classes: {', '.join(first.output.classes)}.",
        f"- Input: float32 NCHW {first.input.shape}: {first.input.contract.describe()}. Output: logits.",
        "- Calibration (PTQ) and fine-tuning (QAT) used the **train** split; every accuracy is on the **test** split.",
        "",
        *preprocessing_section(first),
        "## Artifacts (accuracy measured at build time)",
        "| file | format | precision | runtime | MB | top-1 | Δ vs fp32 (pt) | agreement with eager fp32 | calibration |",
        "|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for m in manifests:
        ev = m.evaluation
        lines.append(
            f"| {m.artifact.file} | {m.format} | {m.precision} | {m.runtime.name} | "
            f"{m.artifact.total_size_bytes / 1e6:.1f} | {ev.top1:.2%} | {ev.change_pt:+.2f} | {ev.top1_agreement_with_eager:.2%} | "
            f"{m.calibration.describe() if m.calibration else '-'} |")
    lines += ["", *settings_section(manifests), *latency_section(bench),
              "## Loading each artifact (only its runtime, no model code)", ""]
    for runtime in sorted({m.runtime.name for m in manifests}):
        example = next(m for m in manifests if m.runtime.name == runtime)
        lines += [f"### {runtime} (e.g. `{example.artifact.file}`)", "",
                  f"Needs: {', '.join(f'{k}{v}' for k, v in example.runtime.requires.items())}.", "",
                  "```python", load_snippet(runtime).format(file=example.artifact.file),
                  "```", ""]
    lines += ["## Checking the bundle", "",
              "`qexport verify .` checks every file's sha256, the installed runtime version, and the golden outputs.", "",
              *signature_section(signed_with)]
    return "\n".join(lines)


def settings_section(manifests: list[Manifest]) -> list[str]:
    """The runtime settings `qexport tune` kept, as the exact environment variables or API calls,
    for the CPU class and batch size they were measured on (and only there)."""
    from qexport.runtimes.settings import how_to_apply

    tuned = [(m, t) for m in manifests for t in m.runtime_settings]
    if not tuned:
        return []
    lines = ["## Runtime settings (measured by `qexport tune`)", "",
             "Apply them only on a CPU of the class named: on another class they were not measured and may slow "
             "the file down. The speed-up is the defaults' p50 over the tuned p50, paired round by round, with its "
             "95 % interval.", "",
             "| file | CPU class | batch | settings | speed-up |", "|---|---|---:|---|---|"]
    for m, t in tuned:
        how = "<br>".join(f"`{line}`" for line in how_to_apply(m.runtime.name, t.settings)) or "defaults (nothing was faster)"
        gain = f"{t.speedup:.2f}× [{t.speedup_low:.2f}, {t.speedup_high:.2f}]" if t.speedup_low is not None else "–"
        lines.append(f"| {m.artifact.file} | {t.cpu_class} | {t.batch_size} | {how} | {gain} |")
    return lines + [""]


def preprocessing_section(manifest: Manifest) -> list[str]:
    """How to turn an image file into the input, with PIL and numpy alone: the contract every
    accuracy here was measured under, and where it came from."""
    from qexport.core.preprocessing import snippet

    contract = manifest.input.contract
    lines = ["## Preprocessing", "",
             f"Every number here was measured on inputs prepared like this ({contract.source or 'source not recorded'}). "
             "Prepare yours the same way, or the accuracy will not hold:", "",
             "```python", snippet(contract), "```", ""]
    if contract.overridden:
        lines += [f"**Overridden at build time:** the checkpoint recorded {contract.overridden}.", ""]
    return lines


def signature_section(method: str | None) -> list[str]:
    """How the bundle was signed and how to check it, with qexport and with the upstream tool alone."""
    from qexport.core.signing import SIGNATURE_FILE, UPSTREAM_VERSION, upstream_verify_command

    if method is None:
        return ["## Signature", "", "Not signed: anyone who can change a file here can change its manifest too. "
                "`qexport pack DIR -o B --sign-key key.pem` signs every file (OpenSSF Model Signing).", ""]
    anchor = "--public-key pub.pem" if method == "key" else "--certificate-chain chain.pem"
    what = "an elliptic-curve private key" if method == "key" else "a private key and its signing certificate"
    return ["## Signature", "",
            f"`{SIGNATURE_FILE}` is an OpenSSF Model Signing signature (Sigstore bundle, DSSE envelope) made with {what} "
            "over the sha256 of every file in this folder, this card included. Check it before trusting any manifest:",
            "", f"- with qexport: `qexport verify . {anchor}`",
            f"- without qexport: `pip install model-signing=={UPSTREAM_VERSION} pyopenssl`, then in this folder "
            f"`{upstream_verify_command(method)}`", "",
            "The public key or certificate chain comes from the sender through another channel, never from the bundle.",
            ""]


def latency_section(bench: BenchDocument | None) -> list[str]:
    from qexport.commands.benchreport import fmt_interval

    if not bench:
        return ["## Latency", "", "Not measured: run `qexport bench DIR` before packing to include it.", ""]
    env, opts = bench.environment, bench.options
    lines = ["## Latency (from bench.json)", "",
             f"{env.cpu.model}; device {opts.device}; pinned cores {opts.pinned_cores}; "
             f"threads {opts.threads}; {env.library_summary()}; {bench.created}; command `{bench.command}`.", "",
             "p50 with its 95 % prediction interval: where one fresh process on this host will land. Speed-ups "
             "against the fastest fp32 artifact at that batch size first (what switching from the fp32 file you "
             f"would otherwise ship gains), then against {bench.baseline}.", "",
             f"| file | batch | p50 ms [next run] | p90 ms | images/s | × best fp32 | × {bench.baseline} |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for row in bench.rows:
        if not row.measured:
            lines.append(f"| {row.file} | - | {row.status}: {row.reason} | | | | |")
            continue
        for batch, stats in row.result.batches.items():
            speedup, best = row.speedup_vs_fp32.get(batch), row.speedup_vs_best_fp32.get(batch)
            lines.append(f"| {row.file} | {batch} | {fmt_interval(stats.p50_prediction_ms, '{:.3f}', stats.p50_ms)} | "
                         f"{stats.p90_ms:.3f} | {stats.throughput_ips:.0f} | "
                         f"{f'{best.estimate:.2f} ({bench.best_fp32.get(batch)})' if best else '-'} | "
                         f"{f'{speedup:.2f}' if speedup else '-'} |")
    return lines + [""]


def pack(directory: Path, output: Path, sign_key: "SigningKey | None" = None) -> tuple[Path, int]:
    """Write the bundle (``.tar.gz`` or ``.zip``) atomically; returns (path, number of entries).

    With ``sign_key`` the bundle also holds ``model.sig`` over every other entry (its ECDSA
    signature differs from run to run, so a signed bundle's bytes do too)."""
    directory = Path(directory)
    if not output.name.endswith((".tar.gz", ".tgz", ".zip")):
        raise QExportError(f"{output.name}: name the bundle *.tar.gz or *.zip.")
    members, manifests = bundle_members(directory)
    card = model_card(manifests, read_bench(directory), sign_key.method if sign_key else None).encode()
    entries = sorted([(p.name, p.read_bytes()) for p in members] + [("MODEL_CARD.md", card)])
    if sign_key:
        entries = sorted(entries + [signature_entry(entries, sign_key)])
    root = output.name.removesuffix(".tar.gz").removesuffix(".tgz").removesuffix(".zip")
    with atomic_path(output) as tmp:
        (write_zip if output.name.endswith(".zip") else write_tar_gz)(tmp, root, entries)
    return output, len(entries)


def signature_entry(entries: list[tuple[str, bytes]], key: "SigningKey") -> tuple[str, bytes]:
    """Sign the bundle's entries exactly as they will be extracted: written to a scratch folder,
    signed there, and the signature added as one more entry."""
    from qexport.core.signing import SIGNATURE_FILE, sign_folder

    with tempfile.TemporaryDirectory(prefix="qexport-pack-") as tmp:
        for name, data in entries:
            (Path(tmp) / name).write_bytes(data)
        return SIGNATURE_FILE, sign_folder(Path(tmp), key).read_bytes()


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
