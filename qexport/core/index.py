"""A folder of artifacts: index.json (every valid manifest and the last build's failures) and the
discovery bench, verify and pack use to decide which manifests they take (torch-free)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from qexport.core.artifact_files import read_manifest
from qexport.core.documents import parse, to_json
from qexport.core.errors import QExportError
from qexport.core.manifest import Manifest, Precision


INDEX_SCHEMA = "qexport.index"


INDEX_SCHEMA_VERSION = 1


def find_manifests(directory: Path) -> list[Path]:
    return sorted(Path(directory).glob("*.manifest.json"))


@dataclass(frozen=True)
class IndexEntry:
    family: str
    file: str
    manifest: str
    format: str
    precision: Precision
    runtime: str
    size_bytes: int
    sha256: str
    top1: float
    model: str

    @classmethod
    def of(cls, manifest_file: Path, manifest: Manifest) -> "IndexEntry":
        return cls(family=manifest.family, file=manifest.artifact.file, manifest=manifest_file.name,
                   format=manifest.format, precision=manifest.precision, runtime=manifest.runtime.name,
                   size_bytes=manifest.artifact.total_size_bytes, sha256=manifest.artifact.sha256,
                   top1=manifest.evaluation.top1, model=manifest.model.name)


@dataclass(frozen=True)
class Failure:
    family: str
    reason: str


@dataclass(frozen=True)
class Index:
    """index.json: the folder's artifacts (every valid manifest) and the last build's failures."""

    model: str
    created: str
    artifacts: list[IndexEntry]
    failed: list[Failure] = field(default_factory=list)
    schema: str = INDEX_SCHEMA
    schema_version: int = INDEX_SCHEMA_VERSION

    def to_dict(self) -> dict:
        return to_json(self)


def read_index(path: Path) -> Index:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:  # ValueError: bad JSON or not UTF-8
        raise QExportError(f"{path} is not a qexport index ({err}); delete it or rebuild.") from err
    if not isinstance(data, dict) or data.get("schema") != INDEX_SCHEMA:
        raise QExportError(f"{path} is not a qexport index (schema {INDEX_SCHEMA}); delete it or rebuild.")
    return parse(Index, data, str(path))


def discover(directory: Path) -> list[tuple[Path, Manifest]]:
    """(manifest path, manifest) for the folder: from index.json when present, else every manifest."""
    directory = Path(directory)
    if not directory.is_dir():
        raise QExportError(f"{directory} is not a folder; pass the folder `qexport build` wrote (default artifacts/).")
    index = directory / "index.json"
    if index.is_file():
        paths = [directory / Path(entry.manifest).name for entry in read_index(index).artifacts]
        say_unlisted(directory, [path for path in find_manifests(directory) if path not in paths])
    else:
        paths = find_manifests(directory)
    if not paths:
        raise QExportError(f"No artifacts in {directory}; run `qexport build --all --out {directory}` first.")
    return [(path, read_manifest(path)) for path in paths]


def say_unlisted(directory: Path, unlisted: list[Path]) -> None:
    """Name the manifests index.json leaves out (copied in after the build, or unreadable when the
    index was written): the folder's index decides what bench, verify and pack take, and leaving
    one out without a word looks like a measurement, a check or a bundle of the whole folder."""
    if not unlisted:
        return
    from qexport.core.progress import say

    names = ", ".join(path.name for path in unlisted)
    say(f"{directory}/index.json does not list {len(unlisted)} manifest(s) in the folder ({names}), so they are "
        "left out; delete index.json to take every manifest in the folder, or build them there with `qexport build`.")
