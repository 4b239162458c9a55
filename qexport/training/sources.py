"""Where a dataset comes from: real CIFAR-10 (its .npz, or torchvision's download), a user's image
folder tree (train/, val/, test/ of class folders, read lazily), and a flagged synthetic set."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import numpy as np
import torch

from qexport.training.data import CIFAR10_CLASSES, SYNTHETIC_SAMPLES, Dataset, Split, default_geometry, with_validation
from qexport.core.errors import QExportError
from qexport.training.images import FileSource, Images
from qexport.core.preprocessing import Preprocessing


SOURCES = ("cifar10", "imagefolder", "synthetic")


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}


DEFAULT_DATA_DIR = "./data"


DEFAULT_FOLDER_SIZE = 224


# ----------------------------------------------------------------------------- loading
def load_dataset(
    source: str = "cifar10",
    data_dir: str | os.PathLike | None = None,
    *,
    image_size: int | None = None,
    download: bool = True,
    synthetic_samples: tuple[int, int] = SYNTHETIC_SAMPLES,
    seed: int = 0,
) -> Dataset:
    """Load one of :data:`SOURCES`; every failure is a one-sentence :class:`QExportError`."""
    directory = Path(data_dir or os.environ.get("QEXPORT_DATA_DIR") or DEFAULT_DATA_DIR)
    if source == "cifar10":
        return load_cifar10(directory, download=download)
    if source == "imagefolder":
        return load_imagefolder(directory, default_geometry(image_size or DEFAULT_FOLDER_SIZE))
    if source == "synthetic":
        return make_synthetic(*synthetic_samples, image_size=image_size or 32, seed=seed)
    raise QExportError(f"Unknown data source {source!r}; choose one of {', '.join(SOURCES)}.")


def load_cifar10(directory: Path, *, download: bool = True) -> Dataset:
    """Read the npz copy (shared/datasets layout) or torchvision's layout; download if allowed."""
    for candidate in (directory / "cifar10.npz", directory / "cifar10" / "cifar10.npz"):
        if candidate.is_file():
            return _cifar10_from_npz(candidate)
    if (directory / "cifar-10-batches-py").is_dir():
        return _cifar10_from_torchvision(directory, download=False)
    if download:
        return _cifar10_from_torchvision(directory, download=True)
    raise QExportError(
        f"CIFAR-10 not found in {directory} (looked for cifar10.npz and cifar-10-batches-py); "
        "point --data-dir (or QEXPORT_DATA_DIR) at it."
    )


def _cifar10_from_npz(path: Path) -> Dataset:
    try:
        with np.load(path) as arrays:
            x_train, y_train = arrays["x_train"], arrays["y_train"]
            x_test, y_test = arrays["x_test"], arrays["y_test"]
    except (OSError, KeyError, ValueError) as err:
        raise QExportError(
            f"{path} is not a readable CIFAR-10 npz (expected x_train/y_train/x_test/y_test): {err}."
        ) from err
    return _cifar10_dataset(x_train, y_train, x_test, y_test, source=str(path))


def _cifar10_from_torchvision(directory: Path, *, download: bool) -> Dataset:
    from torchvision.datasets import CIFAR10

    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    created = not directory.exists()
    try:
        train = CIFAR10(str(directory), train=True, download=download)
        test = CIFAR10(str(directory), train=False, download=download)
    except Exception as err:  # torchvision raises URLError, RuntimeError, OSError...
        _remove_partial_download(directory, created)
        raise QExportError(
            f"CIFAR-10 is not in {directory} and could not be downloaded ({type(err).__name__}); "
            "point --data-dir (or QEXPORT_DATA_DIR) at a folder holding cifar10.npz or cifar-10-batches-py."
        ) from err
    finally:
        socket.setdefaulttimeout(previous_timeout)
    return _cifar10_dataset(train.data, np.array(train.targets), test.data, np.array(test.targets),
                            source=str(directory / "cifar-10-batches-py"))


def _remove_partial_download(directory: Path, created: bool) -> None:
    """A failed download must not leave a half-written archive (or a folder we made) behind."""
    import shutil

    partial = directory / "cifar-10-python.tar.gz"
    if partial.exists() and not (directory / "cifar-10-batches-py").is_dir():
        partial.unlink(missing_ok=True)
    if created and directory.is_dir() and not any(directory.iterdir()):
        shutil.rmtree(directory, ignore_errors=True)


def _cifar10_dataset(x_train, y_train, x_test, y_test, *, source: str) -> Dataset:
    def to_split(x: np.ndarray, y: np.ndarray) -> Split:
        if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] != y.shape[0]:
            raise QExportError(f"CIFAR-10 arrays in {source} have shape {x.shape}; expected N×32×32×3.")
        images = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        return Split(images, torch.from_numpy(y.astype(np.int64)))

    return Dataset("cifar10", list(CIFAR10_CLASSES), to_split(x_train, y_train),
                   to_split(x_test, y_test), source=source)


def load_imagefolder(directory: Path, preparation: Preprocessing) -> Dataset:
    """A user's tree ``train/<class>/*.jpg`` and ``val/<class>/*.jpg`` (``test/`` also accepted).
    A tree with both ``val/`` and ``test/`` keeps ``test/`` for reported accuracy and ``val/`` as
    the validation split the accuracy budget is measured on. Only the file list is read now; the
    images are decoded when used, under ``preparation``'s geometry until the model's contract
    replaces it (the dataset's ``preprocessing`` stays None until then)."""
    train_dir = directory / "train"
    present = [directory / n for n in ("val", "test") if (directory / n).is_dir()]
    if not train_dir.is_dir() or not present:
        raise QExportError(
            f"{directory} is not an image-folder tree: it needs train/<class>/ and val/<class>/ "
            "sub-folders (pass the tree's root with --data-dir)."
        )
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise QExportError(f"{train_dir} has no class sub-folders; put images in train/<class>/.")
    test_dir = present[-1]  # test/ when there is one, else val/
    train = _image_split(train_dir, classes, preparation)
    dataset = Dataset(directory.name or "imagefolder", classes, train, read_labelled_folder(test_dir, classes, preparation),
                      source=str(directory))
    if len(present) == 2:
        dataset = with_validation(dataset, read_labelled_folder(present[0], classes, preparation),
                                  f"{present[0]} (the image folder's val/, never trained on by qexport)")
    return dataset


def read_labelled_folder(root: Path, classes: list[str], preparation: Preprocessing) -> Split:
    """``root/<class>/*.jpg`` labelled by ``classes`` (the train split's, or the checkpoint's); a
    class the model does not know is one sentence, a known class with no images is allowed."""
    if not root.is_dir():
        raise QExportError(f"{root} is not a folder; point it at a folder of <class>/ sub-folders.")
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise QExportError(f"{root} has classes the model was not trained on ({', '.join(unknown[:5])}); "
                           f"it needs the same classes as train/ ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}).")
    return _image_split(root, classes, preparation, allow_empty_class=True)


def _image_split(root: Path, classes: list[str], preparation: Preprocessing, allow_empty_class: bool = False) -> Split:
    """The files of ``root/<class>/`` in class then name order, labelled; nothing is decoded."""
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = sorted(p for p in (root / name).glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) \
            if (root / name).is_dir() else []
        if not found and not allow_empty_class:
            raise QExportError(f"Class folder {root / name} has no images; add some or remove the folder.")
        files += found
        labels += [label] * len(found)
    if not files:
        raise QExportError(f"{root} holds no images; add images under {root}/<class>/.")
    return Split(Images(FileSource(files), preparation), torch.tensor(labels, dtype=torch.int64))


def make_synthetic(train: int = 512, test: int = 256, *, image_size: int = 32, classes: int = 10,
                   seed: int = 0) -> Dataset:
    """Learnable noise: each class has its own colour and stripe pattern. For smoke runs only;
    everything built from it says ``synthetic: true`` because its accuracy means nothing."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.randint(40, 216, (classes, 3, 1, 1), generator=generator).float()
    stripes = torch.arange(image_size).float().view(1, 1, image_size)

    def split(n: int) -> Split:
        labels = torch.randint(0, classes, (n,), generator=generator)
        phase = (labels.float() * 0.7).view(n, 1, 1, 1)
        pattern = 30 * torch.sin(stripes.view(1, 1, 1, image_size) * 0.5 + phase)
        noise = torch.randn(n, 3, image_size, image_size, generator=generator) * 25
        pixels = (prototypes[labels] + pattern + noise).clamp(0, 255).to(torch.uint8)
        return Split(pixels, labels)

    return Dataset("synthetic", [f"class{i}" for i in range(classes)], split(train), split(test),
                   source="synthetic", synthetic=True, note="SYNTHETIC data: accuracy is meaningless")
