"""The preprocessing options `train` and `build` share (--mean, --std, --resize, --crop,
--interpolation, --weights-transforms; a build also --stats-from-data and --force-preprocessing),
declared once and given to a command as one checked ``PreprocessingFlags`` argument, ``flags``."""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Optional

import typer

PANEL = "Preprocessing"
OPTIONS: dict[str, tuple[typing.Any, typing.Any]] = {  # parameter name: (type, typer option)
    "mean": (Optional[str], typer.Option(None, "--mean", rich_help_panel=PANEL, help="Per-channel mean the model was trained with, R,G,B in [0, 1] units, e.g. 0.485,0.456,0.406 (ImageNet).")),
    "std": (Optional[str], typer.Option(None, "--std", rich_help_panel=PANEL, help="Per-channel std the model was trained with, e.g. 0.229,0.224,0.225 (ImageNet).")),
    "resize": (Optional[str], typer.Option(None, "--resize", rich_help_panel=PANEL, help="Resize before the crop: 256 sets the shorter side (aspect kept, as torchvision's Resize(256)); 224x224 squashes to a square.")),
    "crop": (Optional[int], typer.Option(None, "--crop", rich_help_panel=PANEL, help="Centre crop to this square size after the resize, e.g. 224 (CenterCrop(224)).")),
    "interpolation": (Optional[str], typer.Option(None, "--interpolation", rich_help_panel=PANEL, help="Resize interpolation: bilinear (torchvision's default), bicubic (timm's usual), nearest or lanczos.")),
    "weights_transforms": (Optional[str], typer.Option(None, "--weights-transforms", rich_help_panel=PANEL, help="Take the preprocessing of a torchvision weights recipe for --model, e.g. IMAGENET1K_V2 (read from torchvision, nothing downloaded).")),
    "stats_from_data": (bool, typer.Option(False, "--stats-from-data", rich_help_panel=PANEL, help="For a checkpoint that records no preprocessing: compute mean and std from the train split (the build says so; only right if the model was trained that way).")),
    "force_preprocessing": (bool, typer.Option(False, "--force-preprocessing", rich_help_panel=PANEL, help="Use the preprocessing flags even where the checkpoint records another preprocessing (the manifest records the override).")),
}
BUILD_ONLY = ("stats_from_data", "force_preprocessing")


def takes_preprocessing_flags(*, build: bool = False) -> Callable[[Callable], Callable]:
    """Give a command the preprocessing options (a build's two more with ``build``): typer sees
    them as the command's own parameters, and the command receives them parsed and checked as
    ``flags`` before its body runs, so a bad --mean is one sentence before any data is read."""
    names = [name for name in OPTIONS if build or name not in BUILD_ONLY]

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command)
        kept = [p for p in signature.parameters.values() if p.name != "flags"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=OPTIONS[name][1],
                                   annotation=OPTIONS[name][0]) for name in names]

        @functools.wraps(command)
        def with_flags(**given: typing.Any) -> typing.Any:
            return command(flags=parsed_flags(**{name: given.pop(name) for name in names}), **given)

        hints = {k: v for k, v in typing.get_type_hints(command).items() if k != "flags"}
        with_flags.__signature__ = signature.replace(parameters=kept + added)  # type: ignore[attr-defined]
        with_flags.__annotations__ = {**hints, **{name: OPTIONS[name][0] for name in names}}
        return with_flags

    return decorate


def parsed_flags(mean: Optional[str] = None, std: Optional[str] = None, resize: Optional[str] = None,
                 crop: Optional[int] = None, interpolation: Optional[str] = None,
                 weights_transforms: Optional[str] = None, stats_from_data: bool = False,
                 force_preprocessing: bool = False):
    """The preprocessing flags, parsed and checked."""
    from qexport.core.preprocessing_flags import PreprocessingFlags, parse_channels, parse_resize

    size, mode = parse_resize(resize)
    return PreprocessingFlags(mean=parse_channels(mean, "--mean"), std=parse_channels(std, "--std"), resize=size,
                              resize_mode=mode, crop=crop, interpolation=interpolation,
                              weights_transforms=weights_transforms, stats_from_data=stats_from_data,
                              force=force_preprocessing)
