"""A model's input contract as data: how an image file becomes the tensor the model was trained on.

A classifier is only right on inputs prepared the way it was trained: the same resize, crop,
interpolation, mean and std. qexport never guesses them for a model it did not train. The
contract is one typed document, :class:`Preprocessing`, recorded in the checkpoint and in every
manifest, and applied by one function, :func:`prepare`, wherever qexport turns pixels into
inputs: training's evaluation, calibration, the accuracy budget, bench accuracy, LoadGen's
accuracy mode, golden outputs and ``verify``'s raw-image check. The model card prints
:func:`snippet`, the same steps with PIL and numpy only, so a deployment team can reproduce the
input tensor without qexport.

The geometry follows torchvision's PIL path exactly (``Resize(int)`` keeps the aspect ratio and
truncates the longer side, ``CenterCrop`` rounds its offsets), which is also what timm's eval
transform does; a test holds qexport's output equal to torchvision's on real images.

Torch-free (PIL and numpy): ``verify`` of an ONNX artifact runs where only onnxruntime is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from qexport.core.errors import QExportError

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos")
# Pixels per forward pass wherever a whole split is scored: 250 images at 64 px, 20 at 224 px. A
# fixed 250 or 500 images at 224 px held gigabytes of activations (ResNet18's first block alone:
# 1.6 GB at 500), and a build on a 224 px folder peaked at 4.7 GB in one process.
PIXELS_PER_PASS = 250 * 64 * 64
RESIZE_MODES = ("shorter", "exact")


@dataclass(frozen=True)
class Preprocessing:
    """Image file → model input: RGB, resized, centre-cropped, scaled to [0, 1], normalised, NCHW.

    ``resize`` None keeps the image's size. ``resize_mode`` "shorter" resizes the shorter side to
    ``resize`` and keeps the aspect ratio (torchvision's ``Resize(int)``); "exact" squashes the
    image to ``resize``×``resize``. ``crop`` None takes the whole (resized) image."""

    mean: list[float]
    std: list[float]
    resize: int | None = None
    resize_mode: str = "shorter"
    interpolation: str = "bilinear"
    crop: int | None = None
    channel_order: str = "RGB"
    layout: str = "NCHW"
    input_range: list[float] = field(default_factory=lambda: [0.0, 1.0])  # pixel / 255, before mean and std
    source: str = ""       # where this contract came from, in words a user can check
    overridden: str = ""   # what the checkpoint recorded, when --force-preprocessing replaced it

    def __post_init__(self) -> None:
        check(self)

    @property
    def output_size(self) -> int | None:
        """The side of the square input this produces (None: the image's own size, which only
        images of one size can batch)."""
        if self.crop is not None:
            return self.crop
        return self.resize if self.resize_mode == "exact" else None

    def at_size(self, size: int) -> "Preprocessing":
        """This contract for images that already are ``size``×``size`` and are not resized."""
        return self if self.output_size is not None else replace(self, resize=size, resize_mode="exact")

    def describe(self) -> str:
        """One line, e.g. 'resize shorter side to 256 (bilinear), centre crop 224, mean […], std […]'."""
        steps = []
        if self.resize is not None:
            what = "shorter side to" if self.resize_mode == "shorter" else "to"
            steps.append(f"resize {what} {self.resize}" + ("" if self.resize_mode == "shorter" else f"×{self.resize}")
                         + f" ({self.interpolation})")
        if self.crop is not None:
            steps.append(f"centre crop {self.crop}")
        steps.append(f"mean {_numbers(self.mean)}, std {_numbers(self.std)} on {self.channel_order} in "
                     f"[{self.input_range[0]:g}, {self.input_range[1]:g}], {self.layout}")
        return ", ".join(steps)

    def same_contract(self, other: "Preprocessing") -> bool:
        """Whether ``other`` prepares the same tensor from the same file (``source`` aside)."""
        return contract(self) == contract(other)


def contract(p: Preprocessing) -> tuple:
    """What decides the input tensor, rounded so that 0.485 and 0.48500001 are one contract."""
    return (p.resize, p.resize_mode if p.resize is not None else None, p.interpolation if p.resize is not None else None,
            p.crop, tuple(round(m, 5) for m in p.mean), tuple(round(s, 5) for s in p.std),
            p.channel_order, p.layout, tuple(p.input_range))


def _numbers(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def check(p: Preprocessing) -> None:
    """One sentence for each contract that cannot prepare an input, before anything is built."""
    if len(p.mean) != 3 or len(p.std) != 3:
        raise QExportError(f"Mean and std need one value per RGB channel (3 each); got {len(p.mean)} mean and "
                           f"{len(p.std)} std values -- pass e.g. --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225.")
    if any(not math.isfinite(s) or s <= 0 for s in p.std):
        raise QExportError(f"Every std must be a positive number (a std of 0 would divide by zero); got --std "
                           f"{','.join(f'{s:g}' for s in p.std)}.")
    if any(not math.isfinite(m) for m in p.mean):
        raise QExportError(f"Every mean must be a finite number; got --mean {','.join(f'{m:g}' for m in p.mean)}.")
    if p.interpolation not in INTERPOLATIONS:
        raise QExportError(f"Interpolation {p.interpolation!r} is not one qexport applies; choose one of "
                           f"{', '.join(INTERPOLATIONS)}.")
    if p.resize_mode not in RESIZE_MODES:
        raise QExportError(f"Resize mode {p.resize_mode!r} is unknown; use 'shorter' (--resize 256) or 'exact' "
                           "(--resize 224x224).")
    for name, value in (("resize", p.resize), ("crop", p.crop)):
        if value is not None and value < 1:
            raise QExportError(f"--{name} must be a positive number of pixels, not {value}.")
    if p.resize is not None and p.crop is not None and p.crop > p.resize:
        raise QExportError(f"The crop ({p.crop} px) is larger than the resize ({p.resize} px), so it would take "
                           "pixels the image does not have; pass a --crop no larger than --resize.")
    if p.resize_mode == "shorter" and p.resize is not None and p.crop is None:
        raise QExportError(f"--resize {p.resize} keeps each image's aspect ratio, so images differ in shape and "
                           f"cannot form a batch; add --crop N (N ≤ {p.resize}) or resize to a square with "
                           f"--resize {p.resize}x{p.resize}.")
    if (p.channel_order, p.layout, list(p.input_range)) != ("RGB", "NCHW", [0.0, 1.0]):
        raise QExportError(f"qexport prepares RGB, NCHW inputs scaled to [0, 1]; this contract asks "
                           f"{p.channel_order}, {p.layout}, {p.input_range}, which it cannot reproduce.")


# ----------------------------------------------------------------------------- applying it
def batch_for(size: int, most: int) -> int:
    """Images per forward pass for ``size``×``size`` inputs: ``most`` for small images, fewer for
    large ones, so that a pass holds about the same number of pixels whatever the size."""
    return max(1, min(most, PIXELS_PER_PASS // max(size * size, 1)))


def pil_interpolation(name: str) -> int:
    from PIL import Image

    return {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC,
            "lanczos": Image.LANCZOS}[name]


def resized_size(width: int, height: int, p: Preprocessing) -> tuple[int, int]:
    """(width, height) after the resize, as torchvision computes it: the shorter side becomes
    ``resize`` and the longer is truncated, never rounded (``int(resize * long / short)``)."""
    if p.resize is None:
        return width, height
    if p.resize_mode == "exact":
        return p.resize, p.resize
    short, long = min(width, height), max(width, height)
    new_long = int(p.resize * long / short)
    return (p.resize, new_long) if width <= height else (new_long, p.resize)


def crop_box(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """The centre crop's (left, top, right, bottom), with torchvision's rounding of the offsets."""
    if size > width or size > height:
        raise QExportError(f"A {width}×{height} image is smaller than the {size} px crop; resize it first (--resize).")
    left, top = int(round((width - size) / 2.0)), int(round((height - size) / 2.0))
    return left, top, left + size, top + size


def geometry(image, p: Preprocessing):
    """``image`` (a PIL image) resized and cropped as ``p`` says, in RGB."""
    image = image.convert("RGB")
    size = resized_size(*image.size, p)
    if size != image.size:
        image = image.resize(size, pil_interpolation(p.interpolation))
    if p.crop is not None:
        image = image.crop(crop_box(*image.size, p.crop))
    return image


def pixels(image, p: Preprocessing) -> np.ndarray:
    """uint8 C×H×W pixels of ``image`` after the geometry: what training augments and what is
    normalised into the model input."""
    return np.asarray(geometry(image, p), dtype=np.uint8).transpose(2, 0, 1)


def normalise(pixels_nchw: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 N×C×H×W → the float32 model input: scaled to [0, 1], minus mean, over std (the
    same float32 arithmetic as ``qexport.training.data.normalize``, so both give the same bits)."""
    m = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(1, -1, 1, 1)
    return ((pixels_nchw.astype(np.float32) / np.float32(255.0)) - m) / s


def prepare(image, p: Preprocessing) -> np.ndarray:
    """One PIL image → the 1×3×H×W float32 tensor the model takes."""
    return normalise(pixels(image, p)[None], p.mean, p.std)


def prepare_file(data: bytes, p: Preprocessing) -> np.ndarray:
    """The encoded bytes of an image file → the model input (verify's raw-image check)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return prepare(image, p)


# ----------------------------------------------------------------------------- the model card's snippet
def snippet(p: Preprocessing) -> str:
    """Python that prepares one input from an image file with PIL and numpy only: the same steps
    as :func:`prepare`, written out so a deployment team needs nothing of qexport to run it."""
    lines = ["import numpy as np", "from PIL import Image", "",
             'image = Image.open("image.jpg").convert("RGB")']
    interpolation = f"Image.{p.interpolation.upper()}"
    if p.resize is not None and p.resize_mode == "exact":
        lines.append(f"image = image.resize(({p.resize}, {p.resize}), {interpolation})")
    elif p.resize is not None:
        lines += ["w, h = image.size",
                  f"short, long = ({p.resize}, int({p.resize} * max(w, h) / min(w, h)))  # shorter side to {p.resize}",
                  "size = (short, long) if w <= h else (long, short)",
                  f"if size != image.size:\n    image = image.resize(size, {interpolation})"]
    if p.crop is not None:
        lines += [f"left, top = int(round((image.width - {p.crop}) / 2.0)), int(round((image.height - {p.crop}) / 2.0))",
                  f"image = image.crop((left, top, left + {p.crop}, top + {p.crop}))"]
    lines += [f"mean = np.array({[float(m) for m in p.mean]}, dtype=np.float32)",
              f"std = np.array({[float(s) for s in p.std]}, dtype=np.float32)",
              "x = (np.asarray(image, dtype=np.float32) / np.float32(255.0) - mean) / std",
              "x = x.transpose(2, 0, 1)[None]  # 1×3×H×W float32, RGB, NCHW: the model's input"]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- where a contract comes from
IMAGENET_CROP_PCT = 0.875  # 224/256: torchvision's and timm's classic evaluation crop


def from_timm_config(config: dict, name: str) -> Preprocessing:
    """timm's data config (``timm.data.resolve_data_config``) as a contract: the centre crop is
    its input size, and the resize its size over ``crop_pct``, floored, as timm's eval transform does."""
    _, height, width = config["input_size"]
    if height != width:
        raise QExportError(f"timm:{name} takes {height}×{width} inputs and qexport prepares square ones; "
                           "pass --resize and --crop for a square size.")
    crop_pct = config.get("crop_pct") or 1.0
    interpolation = config.get("interpolation") or "bilinear"
    if config.get("crop_mode", "center") != "center":
        raise QExportError(f"timm:{name}'s data config crops in mode {config['crop_mode']!r}; qexport applies centre "
                           "crops only: pass --resize and --crop.")
    return Preprocessing(mean=[float(m) for m in config["mean"]], std=[float(s) for s in config["std"]],
                         resize=int(math.floor(height / crop_pct)), resize_mode="shorter",
                         interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
                         crop=int(height), source=f"timm's data config for {name}")


def from_torchvision_transforms(transform, label: str) -> Preprocessing:
    """A torchvision weights enum's ``transforms()`` (``ImageClassification``) as a contract."""
    resize = list(transform.resize_size)
    crop = list(transform.crop_size)
    if len(resize) != 1 or len(crop) != 1:
        raise QExportError(f"{label} resizes to {resize} and crops {crop}; qexport reproduces one shorter-side resize "
                           "and a square crop -- pass --resize and --crop.")
    interpolation = str(getattr(transform.interpolation, "value", transform.interpolation)).lower()
    return Preprocessing(mean=[float(m) for m in transform.mean], std=[float(s) for s in transform.std],
                         resize=int(resize[0]), resize_mode="shorter", crop=int(crop[0]),
                         interpolation=interpolation, source=f"torchvision {label}.transforms()")
