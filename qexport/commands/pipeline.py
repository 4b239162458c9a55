"""Glue the CLI calls: open data, train or reuse a checkpoint. Kept out of cli.py so tests can
drive the same paths without a subprocess."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from qexport.training import contract
from qexport.training.data import Dataset, Holdout, SYNTHETIC_SAMPLES, channel_stats, hold_out, with_validation
from qexport.training.sources import load_dataset, read_labelled_folder
from qexport.core.documents import parse, to_json
from qexport.core.envinfo import library_versions
from qexport.core.errors import QExportError
from qexport.core.fsutil import ensure_writable_dir
from qexport.training.models import build_model, file_stem, read_checkpoint, save_checkpoint, warm_start
from qexport.core.preprocessing import Preprocessing
from qexport.core.preprocessing_flags import PreprocessingFlags
from qexport.core.progress import say
from qexport.training.train import train
from qexport.training.recipe import IMPLIED_WHEN_UNRECORDED, TrainConfig

NO_FLAGS = PreprocessingFlags()


def open_data(source: str, data_dir: Path | None, image_size: int | None, train_samples: int | None,
              test_samples: int | None, seed: int) -> Dataset:
    """The data a command names. Synthetic data is generated at the asked sizes rather than cut
    from a larger set, so ``--data synthetic --train-samples N`` is one fixed set of N images."""
    if source == "synthetic":
        sizes = (train_samples or SYNTHETIC_SAMPLES[0], test_samples or SYNTHETIC_SAMPLES[1])
        return load_dataset(source, data_dir, image_size=image_size, seed=seed, synthetic_samples=sizes)
    dataset = load_dataset(source, data_dir, image_size=image_size, seed=seed)
    return dataset.limited(train=train_samples, test=test_samples, seed=seed)


def default_checkpoint_path(model_name: str, data: Dataset) -> Path:
    suffix = "" if not data.note else f"-{len(data.train)}x{len(data.test)}"
    return Path("checkpoints") / f"{file_stem(model_name)}-{data.name}{suffix}.pt"


def train_stats(data: Dataset):
    """A callable for the train split's channel statistics, computed only if a contract needs them
    (a folder's whole train split is decoded for them)."""
    def compute() -> tuple[tuple[float, ...], tuple[float, ...]]:
        say(f"computing mean and std over the {len(data.train)} train images of {data.name}")
        return channel_stats(data.train.images)
    return compute


def training_data(model_name: str, data: Dataset, flags: PreprocessingFlags = NO_FLAGS,
                  image_size: int | None = None) -> Dataset:
    """``data`` under the contract ``qexport train`` trains with and records (see
    :func:`qexport.training.contract.for_training`)."""
    chosen = contract.for_training(data.preprocessing, flags, train_stats(data), image_size or data.image_size[0],
                                   model_name)  # the size the data was loaded at already reflects --image-size
    return data if chosen is data.preprocessing else data.with_preprocessing(chosen)


def train_checkpoint(model_name: str, data: Dataset, config: TrainConfig, path: Path,
                     show_progress: bool = True, device: str = "cpu", init_from: Path | None = None) -> Path:
    """Train ``model_name`` on ``data`` and write the checkpoint with everything needed to trust it,
    the input contract it trained under included. ``init_from``: a checkpoint whose weights training
    starts from (``config.init_sha256`` must name it), e.g. one trained at a smaller size."""
    ensure_writable_dir(Path(path).parent)
    data = training_data(model_name, data)
    say(f"preprocessing: {data.contract.describe()} ({data.contract.source})")
    model = build_model(model_name, data.num_classes, data.image_size[0])
    start = warm_start(model, model_name, Path(init_from)) if init_from is not None else None
    if start is not None:
        say(f"starting from {init_from} (trained under {_recorded_contract(start)}, "
            f"test top-1 {start.get('test_top1', float('nan')):.2%})")
    holdout = (Holdout.choose(data.train, config.seed, config.validation_fraction) if data.validation is None
               else Holdout(config.seed, 0, ""))  # an image folder's own val/ is the validation split
    if start is not None:
        holdout = holdout.after(holdout_in(start, f"--init-from {init_from}"))
        if holdout.trained_on_earlier:
            say(f"the {holdout.count} validation images may have been trained on by {init_from} or an earlier stage: "
                "budgets on this checkpoint will say they are optimistic (same --train-samples and --seed keep them unseen)")
    fit = hold_out(data, holdout)
    say(f"training {model_name} on {data.name} ({len(fit.train)} train images, {config.epochs} epochs"
        + (f"; {holdout.count} held out for validation" if holdout.count else "") + ")"
        + (" [SYNTHETIC]" if data.synthetic else ""))
    metrics = train(model, fit, config, show_progress=show_progress, device=device)
    meta = checkpoint_meta(model_name, data, config, metrics)
    meta["validation"] = to_json(holdout)
    if start is not None:
        meta["init_from"] = init_record(Path(init_from), start, config.init_sha256)
        meta["metrics"]["train_seconds_total"] = round(metrics["train_seconds"] + meta["init_from"]["train_seconds_total"], 1)
    save_checkpoint(path, model, model_name, meta)
    say(f"test top-1 {metrics['test_top1']:.2%} on {metrics['test_samples']} test images, "
        f"{metrics['train_seconds'] / 60:.1f} min training → {path}")
    return Path(path)


def _recorded_contract(meta: dict) -> str:
    recorded = meta.get("preprocessing")
    return parse(Preprocessing, recorded, "checkpoint").describe() if recorded else "an unrecorded preprocessing"


def init_record(path: Path, meta: dict, sha256: str | None) -> dict:
    """What a warm-started checkpoint records of the one it started from: enough to say how the
    whole model was made (every stage's contract, accuracy and time), not only its last stage."""
    from qexport.core.fsutil import sha256_file

    metrics = meta.get("metrics", {})
    return {"path": str(path), "sha256": sha256 or sha256_file(path),  # the CLI hashed it already
            "preprocessing": _recorded_contract(meta),
            "test_top1": meta.get("test_top1"), "epochs": meta.get("epochs"),
            "train_seconds_total": float(metrics.get("train_seconds_total", metrics.get("train_seconds", 0.0)))}


def checkpoint_meta(model_name: str, data: Dataset, config: TrainConfig, metrics: dict) -> dict:
    return {
        "model": model_name,
        "classes": list(data.classes),
        "normalization": {"mean": list(data.mean), "std": list(data.std), "value_range": [0.0, 1.0]},
        "preprocessing": to_json(data.contract),
        "image_size": list(data.image_size),
        "data": data.describe(),
        "train_config": config.as_dict(),
        "metrics": metrics,
        "seed": config.seed,
        "epochs": config.epochs,
        "test_top1": metrics["test_top1"],
        "libraries": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def why_not_reusable(path: Path, model_name: str, data: Dataset, config: TrainConfig) -> str | None:
    """Why the checkpoint at ``path`` was not trained by this recipe on this data (None: it was):
    the first difference a user can act on, e.g. 'it was trained 2 epochs, the recipe asks 30'."""
    try:
        meta = read_checkpoint(path).get("meta", {})
    except QExportError as err:
        return f"it cannot be read ({err})"
    if meta.get("model") != model_name:
        return f"it holds {meta.get('model') or 'an unnamed model'}, not {model_name}"
    if meta.get("data", {}).get("fingerprint") != data.fingerprint:
        return "it was trained on other data (its fingerprint differs: other --data, --data-dir or --train-samples)"
    recorded, asked = meta.get("train_config") or {}, config.as_dict()
    recorded = {**IMPLIED_WHEN_UNRECORDED, **recorded}
    changed = [key for key in asked if recorded.get(key) != asked[key]]
    if changed:
        return "it was trained with " + ", ".join(f"{key}={recorded.get(key, 'unset')}" for key in changed[:3]) + \
            ", the recipe asks " + ", ".join(f"{key}={asked[key]}" for key in changed[:3])
    return None


def other_preprocessing(path: Path, model_name: str, flags: PreprocessingFlags) -> str | None:
    """Why a checkpoint trained under another preprocessing than the flags ask is not reused
    (None: the flags ask nothing, or what it recorded): --retrain then trains one under the flags."""
    if flags.force:  # the flags override the record at build time; the checkpoint itself is what is wanted
        return None
    record = contract.recorded(read_checkpoint(path).get("meta", {}), path)
    asked = contract.asked_instead(record, flags, model_name) if record is not None else None
    return None if asked is None else f"it was trained under '{record.describe()}', the flags ask '{asked.describe()}'"


def checkpoint_is_current(path: Path, model_name: str, data: Dataset, config: TrainConfig) -> bool:
    """A checkpoint is reusable when it was trained on the same data with the same recipe."""
    return Path(path).is_file() and why_not_reusable(path, model_name, data, config) is None


def resolve_checkpoint(model_name: str, data: Dataset, checkpoint: Path | None, config: TrainConfig,
                       show_progress: bool = True, device: str = "cpu", retrain: bool = False,
                       flags: PreprocessingFlags = NO_FLAGS) -> Path:
    """The checkpoint to build from: the user's, an up-to-date trained one, or a fresh training run.

    An existing checkpoint at the default path that this recipe would not reuse is never replaced
    silently (that costs hours on a CPU): without ``retrain`` it is one sentence saying why."""
    if checkpoint is not None:
        return Path(checkpoint)
    path = default_checkpoint_path(model_name, data)
    if path.is_file():
        reason = why_not_reusable(path, model_name, data, config) or other_preprocessing(path, model_name, flags)
        if reason is None:
            say(f"reusing up-to-date checkpoint {path}")
            return path
        if not retrain:
            raise QExportError(f"{path} is not reused: {reason}; pass --checkpoint {path} to build from it as it is, "
                               "or --retrain to train a new one in its place.")
        say(f"retraining {path}: {reason}")
    return train_checkpoint(model_name, training_data(model_name, data, flags), config, path,
                            show_progress=show_progress, device=device)


def recorded_holdout(ckpt: dict, checkpoint: Path) -> Holdout | None:
    """The validation images `qexport train` set aside, as the checkpoint records them (None: a
    checkpoint qexport did not train, or one from before validation splits)."""
    return holdout_in(ckpt.get("meta", {}), f"checkpoint {checkpoint}")


def holdout_in(meta: dict, where: str) -> Holdout | None:
    """The hold-out a checkpoint's metadata records. A warm-started checkpoint from before the
    record said whether an earlier stage saw those images counts as one that may have."""
    recorded = meta.get("validation")
    if not recorded:
        return None
    holdout = parse(Holdout, recorded, where)
    unrecorded_history = "init_from" in meta and "trained_on_earlier" not in recorded
    return replace(holdout, trained_on_earlier=True) if unrecorded_history and holdout.count else holdout


def with_budget_images(data: Dataset, holdout: Holdout | None, val_dir: Path | None) -> Dataset:
    """The data a build uses: the checkpoint's validation images set aside of the train split
    (so calibration never sees them), and ``--val-dir`` as the validation split when given."""
    if holdout is not None:
        data = hold_out(data, holdout)
    if val_dir is not None:
        split = read_labelled_folder(Path(val_dir), list(data.classes), data.contract)
        data = with_validation(data, split, f"--val-dir {val_dir}")
    return data


def build_context(model_name: str | None, data: Dataset, checkpoint: Path, options, show_progress: bool = True,
                  val_dir: Path | None = None, flags: PreprocessingFlags = NO_FLAGS):
    """Load the FP32 model and the input contract it was trained with into a BuildContext.

    ``model_name`` None means "whatever the checkpoint records" (resnet18 for a bare state_dict),
    so a user who trained efficientnet_b0 need not repeat --model at build time."""
    from qexport.exporter.registry import BuildContext
    from qexport.core.fsutil import sha256_file
    from qexport.training.models import DEFAULT_MODEL, load_model, read_checkpoint

    ckpt = read_checkpoint(checkpoint)
    name = model_name or ckpt.get("model") or DEFAULT_MODEL
    data = data.with_preprocessing(build_contract(name, data, ckpt, checkpoint, flags))
    model, ckpt = load_model(checkpoint, model_name, data.num_classes, data.image_size[0], ckpt=ckpt)
    saved_classes = ckpt.get("meta", {}).get("classes")
    if saved_classes and list(saved_classes) != list(data.classes):
        raise QExportError(f"Checkpoint {checkpoint} was trained on classes {saved_classes[:3]}…, "
                           f"but the data has {list(data.classes)[:3]}…; use matching --data/--checkpoint.")
    data = with_budget_images(data, recorded_holdout(ckpt, checkpoint), val_dir)
    return BuildContext(model_name=ckpt.get("model") or model_name or DEFAULT_MODEL, model=model, data=data, options=options,
                        checkpoint_sha256=sha256_file(checkpoint), show_progress=show_progress)


def build_contract(model_name: str, data: Dataset, ckpt: dict, checkpoint: Path,
                   flags: PreprocessingFlags) -> Preprocessing:
    """The contract a build uses (:func:`qexport.training.contract.for_build`), said on stderr with its source."""
    chosen = contract.for_build(contract.recorded(ckpt.get("meta", {}), checkpoint), model_name, flags,
                                train_stats(data), checkpoint)
    say(f"preprocessing: {chosen.describe()} ({chosen.source})")
    if flags.stats_from_data and "--stats-from-data" in chosen.source:
        say("--stats-from-data: mean and std were computed from this folder, not taken from how the model was trained; "
            "if it was trained with other statistics, every accuracy and int8 drop here is wrong")
    if chosen.overridden:
        say(f"--force-preprocessing: the checkpoint's record was {chosen.overridden}")
    return chosen
