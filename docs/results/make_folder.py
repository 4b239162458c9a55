"""Write a large image folder from the CIFAR-10 copy, for measuring qexport on a folder that would
not fit in memory decoded: ``train/<class>/`` and ``val/<class>/`` JPEGs, enlarged to a size
that is not square, so the shorter-side resize and the centre crop both do work.

    python docs/results/make_folder.py OUT --train-per-class 1800 --val-per-class 200 --size 288x256

Uses only numpy and PIL; the folder is scratch data, never committed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_split(out: Path, images: np.ndarray, labels: np.ndarray, per_class: int, size: tuple[int, int]) -> int:
    """The first ``per_class`` images of each class, enlarged (bicubic) and saved as quality-90 JPEGs."""
    written = 0
    for label, name in enumerate(CLASSES):
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        for index in np.flatnonzero(labels == label)[:per_class]:
            Image.fromarray(images[index]).resize(size, Image.BICUBIC).save(folder / f"{index:05d}.jpg", quality=90)
            written += 1
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--cifar", type=Path, default=Path(__file__).resolve().parents[3] / "shared/datasets/cifar10/cifar10.npz")
    parser.add_argument("--train-per-class", type=int, default=1800)
    parser.add_argument("--val-per-class", type=int, default=200)
    parser.add_argument("--size", default="288x256", help="WIDTHxHEIGHT of every image")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with np.load(args.cifar) as data:
        train = write_split(args.out / "train", data["x_train"], data["y_train"], args.train_per_class, (width, height))
        val = write_split(args.out / "val", data["x_test"], data["y_test"], args.val_per_class, (width, height))
    print(f"{args.out}: {train} train and {val} val images at {width}x{height}")


if __name__ == "__main__":
    main()
