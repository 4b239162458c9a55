"""The sidecar manifest: schema, naming, reading and validation (torch-free: `verify` of an
ONNX artifact must work where only onnxruntime is installed).

Readers (bench, verify) trust only what validates here; unknown schema versions and missing
fields are refused with one sentence rather than half-understood.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qexport.errors import QExportError

SCHEMA = "qexport.manifest"
SCHEMA_VERSION = 1
INDEX_SCHEMA = "qexport.index"
REQUIRED_FIELDS = ("schema", "schema_version", "artifact", "family", "format", "precision", "runtime",
                   "input", "output", "model", "evaluation", "build")
GOLDEN_ATOL = {"fp32": 1e-3, "bf16": 0.15, "fp16": 0.05, "int8": 0.1}


def manifest_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".manifest.json")


def golden_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".golden.npz")


def validate(manifest: Any, source: str = "manifest") -> dict:
    """Return the manifest if it is one this version understands; otherwise raise one sentence."""
    if not isinstance(manifest, dict):
        raise QExportError(f"{source} is not a JSON object; it is not a qexport manifest.")
    if manifest.get("schema") != SCHEMA:
        raise QExportError(f"{source} is not a qexport manifest (schema {manifest.get('schema')!r}).")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise QExportError(
            f"{source} has manifest schema version {manifest.get('schema_version')!r}; this qexport reads "
            f"version {SCHEMA_VERSION} -- rebuild the artifact or upgrade qexport.")
    missing = [key for key in REQUIRED_FIELDS if key not in manifest]
    if missing:
        raise QExportError(f"{source} lacks required field(s) {', '.join(missing)}; rebuild the artifact.")
    file_name = manifest["artifact"].get("file") if isinstance(manifest["artifact"], dict) else None
    if not isinstance(file_name, str) or not file_name or Path(file_name).name != file_name:
        raise QExportError(
            f"{source} names artifact file {file_name!r}; only a plain file name beside the manifest is allowed.")
    return manifest


def read_manifest(path: Path) -> dict:
    try:
        manifest = json.loads(Path(path).read_text())
    except OSError as err:
        raise QExportError(f"Cannot read manifest {path} ({err.strerror or err}).") from err
    except UnicodeDecodeError as err:
        raise QExportError(f"Manifest {path} is not UTF-8 text; it is not a qexport manifest.") from err
    except json.JSONDecodeError as err:
        raise QExportError(f"Manifest {path} is not valid JSON ({err.msg} at line {err.lineno}).") from err
    return validate(manifest, str(path))


def artifact_file(manifest_file: Path, manifest: dict) -> Path:
    """The artifact a manifest describes: always beside it (no path traversal)."""
    return Path(manifest_file).parent / manifest["artifact"]["file"]


def find_manifests(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob("*.manifest.json"))


def discover(directory: Path) -> list[tuple[Path, dict]]:
    """(manifest path, manifest) for the folder: from index.json when present, else every manifest."""
    directory = Path(directory)
    if not directory.is_dir():
        raise QExportError(f"{directory} is not a folder; pass the folder `qexport build` wrote (default artifacts/).")
    index = directory / "index.json"
    if index.is_file():
        try:
            names = [entry["manifest"] for entry in json.loads(index.read_text())["artifacts"]]
        except (ValueError, KeyError, TypeError) as err:  # ValueError: bad JSON or not UTF-8
            raise QExportError(f"{index} is not a qexport index ({err}); delete it or rebuild.") from err
        paths = [directory / Path(name).name for name in names]
    else:
        paths = find_manifests(directory)
    if not paths:
        raise QExportError(f"No artifacts in {directory}; run `qexport build --all --out {directory}` first.")
    return [(path, read_manifest(path)) for path in paths]


def cpu_needs(manifest: dict) -> tuple["CpuRequirement | None", bool]:
    """(what the artifact needs from the CPU, whether that comes from compiled code).

    Manifests written before requirements were recorded still protect their AOTInductor
    package: it was compiled with -march=native, so it needs the build host's recorded ISA.
    """
    from qexport.hardware import FLAG_LABELS, CpuRequirement, requirement

    recorded = manifest.get("requirements")
    if isinstance(recorded, dict):
        needs = recorded.get("cpu")
        return (CpuRequirement.from_dict(needs) if needs else None), bool(recorded.get("compiled"))
    built = manifest.get("runtime", {}).get("compiled_with", {})
    if isinstance(built, dict) and built.get("isa"):
        flag_of = {label: flag for flag, label in FLAG_LABELS.items()}
        flags = {flag_of[label] for label in built["isa"] if label in flag_of}
        return requirement(f"the build host's ISA ({', '.join(built['isa'])})", flags), True
    return None, False


def host_problem_for(manifest: dict) -> str | None:
    """None when this host's CPU can run the artifact; else one sentence naming what is missing and the fix."""
    from qexport.hardware import host_problem

    needs, compiled = cpu_needs(manifest)
    return host_problem(needs, manifest["artifact"]["file"], compiled)
