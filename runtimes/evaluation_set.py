"""The evaluation set bench scores artifacts on: the data their manifests say they were built with,
refused before any worker starts when it cannot score them, and written once as uint8 pixels per
input geometry for every worker to read."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qexport.core.errors import QExportError
from qexport.core.manifest import Manifest


def data_mismatch(manifest: Manifest, data) -> str | None:
    """Why ``data`` cannot score this artifact (layout, image size or classes differ), or None."""
    name, expected = manifest.artifact.file, manifest.input.image_size
    if manifest.input.layout != "NCHW":
        return f"{name} takes {manifest.input.layout} input and qexport prepares NCHW"
    if tuple(data.image_size) != expected:
        return (f"{name} takes {expected[0]}×{expected[1]} images and the evaluation set "
                f"({data.name}) is {data.image_size[0]}×{data.image_size[1]}")
    classes = manifest.output.classes
    if classes != list(data.classes):
        return (f"{name} predicts {len(classes)} classes ({', '.join(classes[:3])}…) and the evaluation set "
                f"({data.name}) has {len(data.classes)} ({', '.join(list(data.classes)[:3])}…)")
    return None


def require_matching_data(entries: list[tuple[Path, Manifest]], data) -> None:
    """Refuse, before any worker starts, an evaluation set that would give a wrong accuracy."""
    for _, manifest in entries:
        problem = data_mismatch(manifest, data)
        if problem:
            raise QExportError(f"{problem}; pass the --data/--data-dir it was built with, or --no-accuracy.")


def evaluation_data(entries: list[tuple[Path, Manifest]], source: str | None, data_dir: Path | None):
    """The data to score the artifacts on, prepared the way their manifests say they were built.

    Source and (for synthetic data) sample counts come from the first manifest unless given; the
    images are read under the manifest's own preprocessing (resize, crop, mean, std), never a default.
    """
    from qexport.training.sources import load_dataset

    first = entries[0][1]
    recorded = first.data
    source = source or recorded.source_kind
    if source == "imagefolder" and data_dir is None and recorded.source and Path(recorded.source).is_dir():
        data_dir = Path(recorded.source)  # the folder it was built from, when it is still here
    samples = (recorded.train_samples or 512, recorded.test_samples or 256)
    loaded = load_dataset(source, data_dir, image_size=first.input.image_size[0], synthetic_samples=samples)
    return loaded.with_preprocessing(first.input.contract)


class EvalSet:
    """The test split as uint8 pixels, one .npy per input geometry, written once, batch by batch,
    for every worker: each normalises it with its own manifest's mean and std as it reads."""

    def __init__(self, data, samples: int | None, seed: int, folder: Path):
        from qexport.training.data import test_subset

        self.data = data
        self.split = test_subset(data.test, samples, seed)
        self.folder = folder
        self._files: dict[tuple, tuple[str, str]] = {}

    def files_for(self, manifest: Manifest) -> tuple[str, str]:
        """The (pixels, labels) .npy files prepared by this manifest's geometry."""
        contract = manifest.input.contract
        key = (contract.resize, contract.resize_mode, contract.interpolation, contract.crop)
        if key not in self._files:
            n = len(self._files)
            pixels, labels = self.folder / f"pixels{n}.npy", self.folder / "labels.npy"
            write_pixels(self.split.prepared(contract), pixels)
            np.save(labels, self.split.labels.numpy())
            self._files[key] = (str(pixels), str(labels))
        return self._files[key]


def write_pixels(split, path: Path, batch_size: int = 256) -> None:
    """``split``'s uint8 pixels into one .npy, a batch at a time (a folder streams; memory holds
    a few batches, whatever the split's size)."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=tuple(split.images.shape))
    start = 0
    for pixels, _ in split.batches(batch_size, describe="writing the evaluation images"):
        out[start:start + len(pixels)] = pixels.numpy()
        start += len(pixels)
    out.flush()
    del out
