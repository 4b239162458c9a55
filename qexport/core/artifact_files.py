"""Where an artifact's files are and whether they are intact: the names of its manifest and golden
data, reading a manifest, and the sha256 check build, verify, bench and pack share (torch-free)."""

from __future__ import annotations

import json
from pathlib import Path

from qexport.core.errors import QExportError
from qexport.core.manifest import Manifest


def manifest_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".manifest.json")


def golden_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".golden.npz")


GOLDEN_RTOL = 1e-3  # beside the manifest's per-precision atol (Golden.atol)


def golden_gap(actual, expected, atol: float) -> tuple[bool, float]:
    """Whether outputs match the golden ones within the tolerance verify applies, and the largest
    absolute difference (inf when the shapes differ)."""
    import numpy as np

    if np.shape(actual) != np.shape(expected):
        return False, float("inf")
    return bool(np.allclose(actual, expected, atol=atol, rtol=GOLDEN_RTOL)), float(np.abs(actual - expected).max())


def read_manifest(path: Path) -> Manifest:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise QExportError(f"Cannot read manifest {path} ({err.strerror or err}).") from err
    except UnicodeDecodeError as err:
        raise QExportError(f"Manifest {path} is not UTF-8 text; it is not a qexport manifest.") from err
    except json.JSONDecodeError as err:
        raise QExportError(f"Manifest {path} is not valid JSON ({err.msg} at line {err.lineno}).") from err
    return Manifest.from_dict(data, str(path))


def artifact_file(manifest_file: Path, manifest: Manifest) -> Path:
    """The artifact a manifest describes: always beside it (no path traversal)."""
    return Path(manifest_file).parent / manifest.artifact.file


def artifact_paths(manifest_file: Path, manifest: Manifest) -> list[Path]:
    """The artifact and its companion files, all beside the manifest."""
    return [Path(manifest_file).parent / name for name in manifest.artifact.names]


def artifact_problem(manifest_file: Path, manifest: Manifest) -> str | None:
    """None when the artifact and every companion file are present and match the manifest's sha256;
    else one sentence naming the first file that does not (missing, truncated, modified)."""
    from qexport.core.fsutil import sha256_file

    expected = [manifest.artifact.sha256, *(c.sha256 for c in manifest.artifact.companions)]
    for path, sha256 in zip(artifact_paths(manifest_file, manifest), expected):
        if not path.is_file():
            return f"{path.name} is missing; rebuild it with `qexport build`"
        if sha256_file(path) != sha256:
            return f"{path.name} does not match the sha256 in its manifest (modified, truncated or tampered)"
    return None
