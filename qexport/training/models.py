"""Model registry (any torchvision classifier, or a timm architecture as ``timm:<name>``) and the
checkpoint format.

A checkpoint is a plain dict of tensors and JSON-like metadata, read with
``torch.load(weights_only=True)`` so that opening an untrusted file can never run code, and
loadable by both torch 2.14 (main environment) and torch 2.8 (the IPEX environment).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from qexport.core.errors import QExportError, did_you_mean, first_line, last_line
from qexport.core.fsutil import atomic_path

CHECKPOINT_FORMAT = "qexport-checkpoint"
CHECKPOINT_VERSION = 1
DEFAULT_MODEL = "resnet18"


def classification_models() -> list[str]:
    """Names torchvision registers as image classifiers (not detection/segmentation/video)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def accepted_model_names() -> list[str]:
    """What ``--model`` accepts: torchvision classifiers, then timm's architectures where timm is installed."""
    from qexport.training import timm_models

    try:
        return classification_models() + timm_models.timm_model_names()
    except QExportError:  # timm is optional
        return classification_models()


def check_model_name(name: str) -> None:
    """Fail on an unknown name with a "did you mean" before any data is loaded or model built."""
    from qexport.training import timm_models

    if timm_models.is_timm_name(name):
        timm_models.check_timm_name(name)
        return
    names = classification_models()
    if name not in names:
        raise QExportError(
            f"Unknown model {name!r}{did_you_mean(name, names)}; "
            "run `qexport train --list-models` for the classifiers qexport accepts "
            f"(timm architectures as timm:<name>)."
        )


def file_stem(model_name: str) -> str:
    """The model's name as it starts a file name: ``timm:resnet50`` -> ``timm-resnet50`` (a colon
    is not a file name character everywhere a deployment team may copy an artifact to)."""
    return model_name.replace(":", "-")


def build_model(name: str, num_classes: int, image_size: int | None = None) -> nn.Module:
    """A randomly initialised classifier with ``num_classes`` outputs.

    ``image_size`` matters only to architectures built for one input size (a timm ViT's patch grid):
    they are created for the data's size, so training, every build and every load must pass the same."""
    from qexport.training import timm_models

    if timm_models.is_timm_name(name):
        return timm_models.build_timm_model(name, num_classes, image_size)
    import torchvision

    check_model_name(name)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def save_checkpoint(path: Path, model: nn.Module, model_name: str, meta: dict[str, Any]) -> Path:
    """Write atomically: a reader never sees a half-written checkpoint."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model_name,
        "num_classes": int(meta["classes"].__len__()) if "classes" in meta else None,
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint (qexport's own or a bare state_dict) without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise QExportError(f"Checkpoint {path} does not exist; train one with `qexport train` or fix --checkpoint.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # arbitrary bytes make the unpickler raise anything (KeyError, struct.error...)
        first = first_line(str(err), 1000, default=type(err).__name__)
        raise QExportError(
            f"{path} is not a readable PyTorch checkpoint ({first[:160]}); "
            "pass a state_dict saved with torch.save or a file written by `qexport train`."
        ) from err
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        if obj.get("version") != CHECKPOINT_VERSION:
            raise QExportError(f"{path} has checkpoint version {obj.get('version')}; this qexport reads version {CHECKPOINT_VERSION}.")
        return obj
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"format": "state_dict", "model": None, "state_dict": obj, "meta": {}}
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        return {"format": "state_dict", "model": None, "state_dict": obj["state_dict"], "meta": {}}
    raise QExportError(f"{path} holds a {type(obj).__name__}, not a state_dict; save model.state_dict() instead.")


def load_model(path: Path, model_name: str | None, num_classes: int, image_size: int | None = None,
               ckpt: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Build ``model_name`` and load the checkpoint into it (``ckpt``: the checkpoint already
    read from ``path``); a mismatch is one clear sentence."""
    ckpt = read_checkpoint(path) if ckpt is None else ckpt
    saved_name = ckpt.get("model")
    if model_name and saved_name and model_name != saved_name:
        raise QExportError(
            f"Checkpoint {path} is for {saved_name!r}, not {model_name!r}; pass --model {saved_name} or another checkpoint."
        )
    name = model_name or saved_name or DEFAULT_MODEL
    model = build_model(name, num_classes, image_size)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        detail = _first_mismatch(str(err))
        raise QExportError(
            f"Checkpoint {path} does not fit {name} with {num_classes} classes ({detail}); "
            "check --model and the data's class count."
        ) from err
    model.eval()
    return model, ckpt


def warm_start(model: nn.Module, model_name: str, path: Path) -> dict[str, Any]:
    """Load the weights of the checkpoint at ``path`` into a freshly built ``model`` before training
    (progressive resizing: train small, then go on at the deployment size). Returns the checkpoint's
    metadata, which the new checkpoint records. A timm architecture whose weights depend on the
    image size (a ViT's position embedding) has them resampled by timm's own filter."""
    from qexport.training import timm_models

    ckpt = read_checkpoint(path)
    saved_name = ckpt.get("model")
    if saved_name and saved_name != model_name:
        raise QExportError(f"--init-from {path} holds {saved_name!r}, not {model_name!r}; pass a checkpoint of --model {model_name}.")
    state = ckpt["state_dict"]
    if timm_models.is_timm_name(model_name):
        state = timm_models.fit_to_model(state, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise QExportError(f"--init-from {path} does not fit {model_name} on this data ({_first_mismatch(str(err))}); "
                           "pass a checkpoint trained on the same classes.") from err
    return ckpt.get("meta", {})


def _first_mismatch(message: str) -> str:
    """Reduce torch's multi-line load_state_dict error to its most telling line."""
    for line in message.splitlines():
        line = line.strip()
        if line.startswith(("size mismatch", "Missing key", "Unexpected key")):
            return line.rstrip(".")[:200]
    return last_line(message, 200, default="state_dict mismatch")
