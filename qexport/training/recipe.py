"""The training recipe: every hyper-parameter with its one default (the command line reads its
defaults and help from these fields), checked when it is made. Torch-free, so the CLI can read it
without importing torch."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from qexport.core.build_records import VALIDATION_FRACTION, VALIDATION_MAX
from qexport.core.errors import QExportError
from qexport.core.options import SharedConfig, option

OPTIMIZERS = ("sgd", "adamw")
# AdamW's decoupled weight decay, as timm trains vision transformers; applied to weight matrices only.
ADAMW_WEIGHT_DECAY = 0.05
# Recipe fields older checkpoints do not record, with the value their training used: a checkpoint from
# before a field existed is still reused when the recipe asks that value.
IMPLIED_WHEN_UNRECORDED = {"optimizer": "sgd"}


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters; the defaults are the ones the README's accuracy figure was measured with."""

    epochs: int = option(30, "--epochs", "Training epochs (30 reaches the README's accuracy on CIFAR-10).")
    batch_size: int = option(256, "--batch-size", "Mini-batch size (at 224 px, 32 to 64 fit in memory for a ResNet50).")
    max_lr: float = option(0.2, "--lr", "Peak learning rate of the one-cycle schedule.")
    optimizer: str = option(
        "sgd", "--optimizer",
        "sgd: SGD with Nesterov momentum, for convolutional networks (the README's figures). adamw: AdamW, "
        f"weight decay {ADAMW_WEIGHT_DECAY} on weight matrices only, as timm and DeiT train vision "
        "transformers from scratch; give it a smaller --lr, e.g. 0.001.")
    weight_decay: float = 5e-4  # SGD's; AdamW uses ADAMW_WEIGHT_DECAY
    momentum: float = 0.9
    label_smoothing: float = 0.1
    pad: int = 4  # random-crop padding at 32 px; larger images pad in proportion (28 px at 224)
    seed: int = SharedConfig.seed
    threads: int | None = None  # None: all usable cores
    # Batch-norm statistics recomputed on this many train images at the end (0: off). Part of the
    # recipe, so a checkpoint trained without it is not reused as "up to date".
    bn_recalibration_images: int = 10_000
    # Share of the train split set aside before training (at most data.VALIDATION_MAX images) so the
    # accuracy budget is measured on images the model never trained on (0: none; the budget then
    # falls back to training images and says it is likely optimistic).
    validation_fraction: float = option(
        VALIDATION_FRACTION, "--val-fraction",
        f"Share of the train split set aside before training (at most {VALIDATION_MAX} images) and never trained "
        "on: the accuracy budget of `qexport build` is measured on it. 0 trains on every image (the budget then "
        "falls back to training images, which is optimistic). An image folder with both val/ and test/ uses its "
        "val/ instead.")
    # sha256 of the checkpoint training started from (--init-from; None: random initialisation).
    init_sha256: str | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.validation_fraction < 1:
            raise QExportError(f"--val-fraction must be at least 0 and below 1, got {self.validation_fraction}.")
        if self.optimizer not in OPTIMIZERS:
            raise QExportError(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}.")
        if self.epochs < 0:
            raise QExportError(f"--epochs must be 0 or more, got {self.epochs}.")
        if self.batch_size < 1:
            raise QExportError(f"--batch-size must be at least 1, got {self.batch_size}.")
        if not (self.max_lr > 0 and math.isfinite(self.max_lr)):
            raise QExportError(f"--lr must be a positive number, got {self.max_lr}.")

    def as_dict(self) -> dict:
        return asdict(self)
