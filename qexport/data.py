"""Data sources: real CIFAR-10, a user's ImageFolder tree, and a flagged synthetic set.

A split holds its images as :class:`~qexport.images.Images`: CIFAR-10's raw pixels in memory
(150 MB), a folder's files on disk, each prepared by the dataset's
:class:`~qexport.preprocessing.Preprocessing` when it is read. Every consumer sees exactly the
same pixels, and a folder of any size streams. Calibration subsets are drawn from the train split
and accuracy is measured on the test split -- never the other way round.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from qexport.errors import QExportError
from qexport.images import ArraySource, FileSource, Images, fingerprint_of, stream
from qexport.build_records import VALIDATION_FRACTION, VALIDATION_MAX
from qexport.preprocessing import IMAGENET_CROP_PCT, Preprocessing, batch_for

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
SOURCES = ("cifar10", "imagefolder", "synthetic")
SYNTHETIC_SAMPLES = (512, 256)  # train, test images of --data synthetic unless --train/--test-samples say
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"}
DEFAULT_DATA_DIR = "./data"
DEFAULT_FOLDER_SIZE = 224
STATS_FROM_DATA = "statistics of the train split"


@dataclass
class Split:
    """Images (read as uint8 N×3×H×W) and integer labels of one split."""

    images: Images
    labels: torch.Tensor

    def __post_init__(self) -> None:
        self.images = Images.of(self.images)  # a uint8 tensor is wrapped: raw pixels in memory

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> "Split":
        return Split(self.images.select(indices), self.labels[indices])

    def prepared(self, preparation: Preprocessing) -> "Split":
        """The same images under another contract's geometry (nothing is decoded)."""
        return Split(self.images.prepared(preparation), self.labels)

    def batches(self, batch_size: int, order: torch.Tensor | None = None, describe: str | None = None):
        """(uint8 pixels, labels) batches in ``order`` (default: as stored); a folder streams, and
        says how far a long pass is when ``describe`` names it."""
        order = torch.arange(len(self)) if order is None else order
        return stream(self.images, self.labels, order, batch_size, describe)


def default_geometry(size: int, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), source: str = "") -> Preprocessing:
    """The classic evaluation geometry for ``size`` px: the shorter side to size/0.875 (256 for
    224), then a centre crop of ``size``. What ``qexport train`` uses on an image folder unless told."""
    return Preprocessing(mean=list(mean), std=list(std), resize=int(size / IMAGENET_CROP_PCT), resize_mode="shorter",
                         crop=size, source=source)


@dataclass
class Dataset:
    """A train/test pair plus the facts every artifact manifest repeats about it.

    ``preprocessing`` is the input contract the splits are read under. CIFAR-10 and synthetic data
    start with the statistics of their train split at their own size (what ``qexport train``
    records); an image folder starts with none (None), since only the model it serves can say."""

    name: str
    classes: list[str]
    train: Split
    test: Split
    source: str
    synthetic: bool = False
    preprocessing: Preprocessing | None = None
    fingerprint: str = ""
    note: str = ""
    # Images the fp32 model never trained on, for the accuracy budget (never the test split): set
    # aside of the train split by `qexport train` (``train`` then holds the rest), or the user's.
    validation: Split | None = None
    validation_source: str = ""
    held_out_of_train: int = 0  # images ``train`` lost to ``validation`` (the train split as loaded had them)

    def __post_init__(self) -> None:
        if self.preprocessing is None and self.train.images.source.native_size is not None:  # pixels in memory: cheap
            mean, std = channel_stats(self.train.images)
            self.preprocessing = Preprocessing(mean=list(mean), std=list(std), source=STATS_FROM_DATA)
        if self.preprocessing is not None:
            self._prepare(self.preprocessing)
        if not self.fingerprint:
            self.fingerprint = fingerprint(self.train, self.test)

    def _prepare(self, preparation: Preprocessing) -> None:
        """Read every split under ``preparation``; one that names no size keeps the split's own
        (CIFAR-10's 32 px; for a folder, --image-size squashed, as builds before contracts did)."""
        if preparation.output_size is None:
            preparation = preparation.at_size(self.train.images.size)
        self.preprocessing = preparation
        self.train, self.test = self.train.prepared(preparation), self.test.prepared(preparation)
        if self.validation is not None:
            self.validation = self.validation.prepared(preparation)

    def with_preprocessing(self, preparation: Preprocessing) -> "Dataset":
        """This data read under ``preparation`` (the model's contract): nothing is decoded now."""
        return replace(self, preprocessing=preparation)

    @property
    def contract(self) -> Preprocessing:
        if self.preprocessing is None:
            raise QExportError(f"The preprocessing of {self.name} is not settled; pass --mean and --std (and --resize/"
                               "--crop), --weights-transforms, or --stats-from-data.")
        return self.preprocessing

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.contract.mean)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.contract.std)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.train.images.size
        return size, size

    def describe(self) -> dict:
        """What a manifest or checkpoint records about the data it came from."""
        return {
            "name": self.name,
            "source": self.source,
            "synthetic": self.synthetic,
            "classes": list(self.classes),
            "train_samples": len(self.train) + self.held_out_of_train,  # as loaded (the fingerprint's)
            "test_samples": len(self.test),
            "validation_samples": len(self.validation) if self.validation is not None else 0,
            "validation": self.validation_source,
            "image_size": list(self.image_size),
            "mean": [round(m, 6) for m in self.mean] if self.preprocessing else [],
            "std": [round(s, 6) for s in self.std] if self.preprocessing else [],
            "fingerprint": self.fingerprint,
            "note": self.note,
        }

    def limited(self, train: int | None = None, test: int | None = None, seed: int = 0) -> "Dataset":
        """A seeded random subset (for quick runs); flagged in ``note`` so no one mistakes it."""
        if not train and not test:
            return self
        new_train = seeded_subset(self.train, train, seed) if train else self.train
        new_test = seeded_subset(self.test, test, seed + 1) if test else self.test
        note = f"subset: {len(new_train)} train / {len(new_test)} test samples (seed {seed})"
        return replace(self, train=new_train, test=new_test, fingerprint="", note=note)


def seeded_subset(split: Split, n: int, seed: int, skip: int = 0) -> Split:
    """``n`` samples chosen by a seeded permutation, after its first ``skip``: the same seed gives
    the same images, and subsets taken from disjoint ranges of one permutation never overlap (the
    accuracy budget's held-out images follow the calibration images this way)."""
    generator = torch.Generator().manual_seed(seed)
    indices = torch.randperm(len(split), generator=generator)[skip:skip + max(n, 0)].sort().values
    return split.subset(indices)


def test_subset(split: Split, samples: int | None, seed: int) -> Split:
    """The images accuracy is scored on, wherever it is scored (a build, a bench): all of ``split``,
    or a seeded subset of ``samples`` when fewer are asked for (--eval-samples)."""
    return seeded_subset(split, samples, seed) if samples and samples < len(split) else split


test_subset.__test__ = False  # a data helper, not a test pytest should collect


def split_fingerprint(split: Split) -> str:
    """sha256 over one split's raw images and labels: proves a validation split is the same images."""
    return fingerprint_of(split.images, labels=(split.labels,))


@dataclass(frozen=True)
class Holdout:
    """The seeded validation subset ``qexport train`` sets aside of the train split before
    training, as the checkpoint records it: the first ``count`` of the seeded permutation of the
    train split, and the fingerprint that proves a later build holds out the same images."""

    seed: int
    count: int
    fingerprint: str

    @classmethod
    def choose(cls, train: Split, seed: int, fraction: float = VALIDATION_FRACTION,
               cap: int = VALIDATION_MAX) -> "Holdout":
        count = min(int(len(train) * fraction), cap)
        return cls(seed=seed, count=count, fingerprint=split_fingerprint(seeded_subset(train, count, seed)))

    def describe(self) -> str:
        return f"{self.count} images held out of the train split before training (seed {self.seed})"


def hold_out(data: Dataset, holdout: Holdout) -> Dataset:
    """``data`` with the validation images of ``holdout`` set aside: ``train`` keeps the rest (what
    training, calibration and fine-tuning see), ``validation`` the held-out images. Mean, std and
    the data fingerprint stay those of the data as loaded. Different images than the checkpoint
    recorded (other --data, --train-samples or --seed) are one sentence, never a silent mix."""
    if holdout.count == 0:
        return data
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(holdout.seed))
    validation = data.train.subset(order[:holdout.count].sort().values)
    if split_fingerprint(validation) != holdout.fingerprint:
        raise QExportError(
            f"The checkpoint held out {holdout.count} validation images (seed {holdout.seed}) that this data does not "
            "have; build with the --data, --data-dir, --train-samples and --seed it was trained with, or pass --val-dir.")
    return replace(data, train=data.train.subset(order[holdout.count:].sort().values), validation=validation,
                   validation_source=holdout.describe(), held_out_of_train=holdout.count)


def with_validation(data: Dataset, validation: Split, source: str) -> Dataset:
    """``data`` with a validation split the user names (``--val-dir``, or an image folder's val/
    beside its test/); the train split is left whole."""
    return replace(data, validation=validation, validation_source=source)


def calibration_split(data: Dataset, samples: int, seed: int = 0) -> Split:
    """The calibration subset every PTQ family shares: always from the **train** split."""
    return seeded_subset(data.train, samples, seed)


def channel_stats(images: Images | torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std in [0, 1] units, in batches to bound memory (a folder streams)."""
    images = Images.of(images)
    total = torch.zeros(3, dtype=torch.float64)
    total_sq = torch.zeros(3, dtype=torch.float64)
    count = 0
    batch = batch_for(images.size, 4096)  # float64 copies: about 100 MB a batch at any size
    for chunk, _ in stream(images, torch.zeros(len(images), dtype=torch.int64), torch.arange(len(images)), batch,
                           "mean and std"):
        chunk = chunk.to(torch.float64) / 255.0
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += (chunk * chunk).sum(dim=(0, 2, 3))
        count += chunk.shape[0] * chunk.shape[2] * chunk.shape[3]
    mean = total / max(count, 1)
    std = (total_sq / max(count, 1) - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def fingerprint(train: Split, test: Split) -> str:
    """sha256 over both splits' raw images (pixels, or the files' bytes) and labels: ties a
    checkpoint to the exact data, whatever geometry later reads it."""
    return fingerprint_of(train.images, test.images, labels=(train.labels, test.labels))


def normalize(images: torch.Tensor | Images, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 NCHW → float32 NCHW, the input every artifact expects."""
    if isinstance(images, Images):
        images = images[:]
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (images.to(torch.float32) / 255.0 - m) / s


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
