"""timm architectures as qexport models: ``--model timm:<name>``.

Most vision teams train with timm, so its architectures go through every family like a torchvision
classifier. Three rules keep a build reproducible and offline:
- weights never come from a hub (``pretrained=False``); they come from ``--checkpoint`` or training;
- timm's export-safe layers are asked for (``exportable=True``), since every artifact is an export;
- an architecture with a fixed input size (ViT's patch grid and position embedding, LeViT, EfficientViT)
  is created for the data's image size, and a size it cannot take is one sentence before any work.
timm is optional (``pip install 'qexport[timm]'``) and imported only here, when a timm name is used.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from qexport.core.errors import QExportError, did_you_mean, first_line

PREFIX = "timm:"
INSTALL = "pip install 'qexport[timm]'"


def is_timm_name(name: str | None) -> bool:
    """Whether a model name asks for a timm architecture (``timm:<name>``)."""
    return bool(name) and name.startswith(PREFIX)


def architecture(name: str) -> str:
    """The timm name inside ``timm:<name>``."""
    return name[len(PREFIX):]


def import_timm() -> Any:
    """timm itself, or one sentence with the command that installs it."""
    try:
        import timm
    except ImportError as err:
        raise QExportError(f"timm models need the timm package, which is not installed; run `{INSTALL}`.") from err
    return timm


def timm_model_names() -> list[str]:
    """Every architecture this timm registers, as qexport names it."""
    return [PREFIX + arch for arch in import_timm().list_models()]


def check_timm_name(name: str) -> None:
    """Fail on an unknown architecture with a "did you mean", before any data is loaded."""
    timm = import_timm()
    arch = architecture(name)
    if not timm.is_model(arch):
        raise QExportError(
            f"Unknown timm model {arch!r}{did_you_mean(arch, timm.list_models())}; "
            "run `qexport train --list-models` for every name qexport accepts."
        )


def fixed_input_size(arch: str) -> int | None:
    """The one square input size an architecture is built for, or None where any size fits.

    timm marks these in the pretrained config (``fixed_input_size``); they take ``img_size``."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(arch)
    return int(cfg.input_size[-1]) if cfg is not None and cfg.fixed_input_size else None


def cause(err: BaseException) -> str:
    """timm's own message, first line, without its full stop (it sits inside our sentence)."""
    return first_line(str(err), 160, default=type(err).__name__).rstrip(".")


def build_timm_model(name: str, num_classes: int, image_size: int | None = None) -> nn.Module:
    """A randomly initialised timm ``name`` with ``num_classes`` outputs for ``image_size`` images."""
    check_timm_name(name)
    timm = import_timm()
    arch = architecture(name)
    native = fixed_input_size(arch)
    sized = {"img_size": image_size} if native is not None and image_size else {}
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, exportable=True, **sized)
    except Exception as err:  # timm asserts on sizes its layers cannot split (patch grid, window)
        raise QExportError(
            f"timm cannot build {arch} for {image_size}×{image_size} images ({cause(err)}); "
            f"pass --image-size with a size it accepts (its own is {native})."
        ) from err
    if image_size:
        check_accepts_size(model, arch, image_size, native)
    return model


def check_accepts_size(model: nn.Module, arch: str, image_size: int, native: int | None) -> None:
    """Run one blank image through the model so a size the architecture cannot take is one sentence
    here, not an exporter's traceback after minutes of calibration (a stem that strides the image
    away, a window that no longer divides it)."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    except Exception as err:
        own = f"its own is {native}" if native else "try a larger one"
        raise QExportError(
            f"timm:{arch} does not take {image_size}×{image_size} images ({cause(err)}); "
            f"pass --image-size with a size it accepts ({own})."
        ) from err
    finally:
        model.train(was_training)


def fit_to_model(state_dict: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """``state_dict`` adapted to ``model`` by the architecture's own timm filter, where it has one:
    a ViT trained on another image size has another patch grid, and timm resamples its position
    embedding to the new grid (what timm does when it loads pretrained weights at another size)."""
    import importlib

    adapt = getattr(importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None)
    return adapt(state_dict, model) if adapt is not None else state_dict
