"""Datasets and their splits (the loaders are in sources.py): subsets, hold-outs, statistics.

A split holds its images as :class:`~qexport.training.images.Images`: CIFAR-10's raw pixels in memory
(150 MB), a folder's files on disk, each prepared by the dataset's
:class:`~qexport.core.preprocessing.Preprocessing` when it is read. Every consumer sees exactly the
same pixels, and a folder of any size streams. Calibration subsets are drawn from the train split
and accuracy is measured on the test split -- never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from qexport.core.errors import QExportError
from qexport.training.images import Images, fingerprint_of, stream
from qexport.core.build_records import VALIDATION_FRACTION, VALIDATION_MAX
from qexport.core.preprocessing import IMAGENET_CROP_PCT, Preprocessing, batch_for

CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
SYNTHETIC_SAMPLES = (512, 256)  # train, test images of --data synthetic unless --train/--test-samples say
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
    validation_trained_on: bool = False  # an earlier training stage may have trained on it (Holdout.trained_on_earlier)
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
    # An earlier training stage (--init-from) may have trained on these images: it held out other
    # images, or none, or did not record what it held out. The budget is then optimistic, and says so.
    trained_on_earlier: bool = False

    @classmethod
    def choose(cls, train: Split, seed: int, fraction: float = VALIDATION_FRACTION,
               cap: int = VALIDATION_MAX) -> "Holdout":
        count = min(int(len(train) * fraction), cap)
        return cls(seed=seed, count=count, fingerprint=split_fingerprint(seeded_subset(train, count, seed)))

    def describe(self) -> str:
        earlier = ", which an earlier training stage (--init-from) may have trained on" if self.trained_on_earlier else ""
        return f"{self.count} images held out of the train split before training (seed {self.seed}){earlier}"

    def after(self, earlier: "Holdout | None") -> "Holdout":
        """This hold-out in a checkpoint trained on from one that held out ``earlier`` (None: it
        recorded none): still unseen only if every earlier stage held out these very images."""
        same = earlier is not None and (earlier.count, earlier.fingerprint) == (self.count, self.fingerprint)
        return replace(self, trained_on_earlier=bool(self.count) and not (same and not earlier.trained_on_earlier))


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
                   validation_source=holdout.describe(), validation_trained_on=holdout.trained_on_earlier,
                   held_out_of_train=holdout.count)


def with_validation(data: Dataset, validation: Split, source: str) -> Dataset:
    """``data`` with a validation split the user names (``--val-dir``, or an image folder's val/
    beside its test/); the train split is left whole. It replaces any hold-out as the budget's
    images, and with it the hold-out's doubt that an earlier training stage saw them."""
    return replace(data, validation=validation, validation_source=source, validation_trained_on=False)


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


