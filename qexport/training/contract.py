"""Which input contract a model gets, and from where: never a guess.

For a model qexport builds from, the sources are, in this order:

1. the checkpoint's own record (``qexport train`` writes it);
2. for ``timm:`` models, timm's data config for the architecture;
3. for torchvision models, the transforms of a named weights enum (``--weights-transforms``);
4. the flags ``--mean``/``--std``/``--resize``/``--crop``/``--interpolation``;
5. ``--stats-from-data``: mean and std computed from the train split, said out loud.

Flags refine a source (a timm model fine-tuned at another size), but never silently contradict a
checkpoint's record: that is refused, naming both, unless ``--force-preprocessing``, which the
manifest then records. A bare ``state_dict`` with no source is refused in one sentence.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qexport.core.documents import parse
from qexport.core.errors import QExportError
from qexport.core.preprocessing import Preprocessing, from_timm_config, from_torchvision_transforms
from qexport.core.preprocessing_flags import PreprocessingFlags

NO_SOURCE = ("pass the preprocessing it was trained with: --mean R,G,B --std R,G,B with --resize and --crop "
             "(e.g. --resize 256 --crop 224), --weights-transforms NAME for a torchvision weights recipe such as "
             "IMAGENET1K_V2, or --stats-from-data to compute mean and std from the train split")


def recorded(meta: dict, checkpoint: Path) -> Preprocessing | None:
    """The contract a checkpoint records: ``preprocessing``, or, in a checkpoint from before it,
    the normalisation and square size the model was trained with (a squashing resize)."""
    if meta.get("preprocessing"):
        return parse(Preprocessing, meta["preprocessing"], f"checkpoint {checkpoint}")
    norm, size = meta.get("normalization"), meta.get("image_size")
    if norm and size:
        return Preprocessing(mean=list(norm["mean"]), std=list(norm["std"]), resize=int(size[0]), resize_mode="exact",
                             source=f"checkpoint {Path(checkpoint).name} (its normalisation and {size[0]} px size)")
    return None


def for_training(data_contract: Preprocessing | None, flags: PreprocessingFlags, data_stats, default_size: int,
                 model_name: str) -> Preprocessing:
    """The contract ``qexport train`` trains with and records: the flags over the data's own
    (CIFAR-10: its train statistics at 32 px; a folder: its train statistics, the shorter side to
    size/0.875 and a centre crop), or a weights recipe or timm's config when named."""
    if flags.weights_transforms:
        return refined(weights_contract(model_name, flags.weights_transforms), flags)
    base = data_contract
    if base is None:
        from qexport.training.data import STATS_FROM_DATA, default_geometry

        mean, std = (flags.mean, flags.std) if flags.mean and flags.std else data_stats()
        base = default_geometry(default_size, mean, std, STATS_FROM_DATA + f"; qexport's {default_size} px geometry")
    return refined(base, flags)


def for_build(record: Preprocessing | None, model_name: str, flags: PreprocessingFlags, data_stats,
              checkpoint: Path) -> Preprocessing:
    """The contract a build (and every artifact of it) uses; see the module's docstring for the order."""
    if record is not None:
        return _against_record(record, flags, checkpoint, model_name)
    if flags.weights_transforms:
        return refined(weights_contract(model_name, flags.weights_transforms), flags)
    from qexport.training.timm_models import is_timm_name

    if is_timm_name(model_name):
        return refined(timm_contract(model_name), flags)
    if flags.mean is not None or flags.std is not None:
        return flags.alone(None)
    if flags.stats_from_data:
        mean, std = data_stats()
        from qexport.training.data import STATS_FROM_DATA

        return refined(Preprocessing(mean=list(mean), std=list(std), source=f"{STATS_FROM_DATA} (--stats-from-data)"),
                       flags)
    raise QExportError(f"Checkpoint {checkpoint} records no preprocessing, so qexport cannot know how its inputs were "
                       f"prepared; {NO_SOURCE}.")


def refined(base: Preprocessing, flags: PreprocessingFlags) -> Preprocessing:
    """``base`` with the parts the flags give replaced, its source saying so."""
    return flags.over(base, f"{base.source}, with {flags.names()}") if flags.given else base


def _against_record(record: Preprocessing, flags: PreprocessingFlags, checkpoint: Path,
                    model_name: str) -> Preprocessing:
    """The checkpoint's record, unless flags contradict it: refused, or with --force-preprocessing
    the flags' contract, noting what it overrode."""
    asked = asked_instead(record, flags, model_name)
    if asked is None:
        return record
    shown = asked.describe()
    if not flags.force:
        raise QExportError(f"Checkpoint {checkpoint} records its preprocessing as '{record.describe()}', and the flags "
                           f"ask '{shown}'; drop the flags to use the record, or pass --force-preprocessing to "
                           "override it (the manifest records that it was overridden).")
    return replace(asked, overridden=f"{record.describe()} (recorded in {Path(checkpoint).name}; "
                                     "replaced by --force-preprocessing)")


def asked_instead(record: Preprocessing, flags: PreprocessingFlags, model_name: str) -> Preprocessing | None:
    """The contract the flags ask for where it differs from ``record``; None when they ask
    nothing, or the same."""
    if not flags.given and not flags.weights_transforms:
        return None
    asked = flags.over(record, f"command-line flags {flags.names()}") if not flags.weights_transforms else \
        refined(weights_contract(model_name, flags.weights_transforms), flags)
    return None if asked.same_contract(record) else asked


def timm_contract(model_name: str) -> Preprocessing:
    """timm's own data config for the architecture (``resolve_data_config``; nothing downloaded)."""
    from qexport.training.timm_models import architecture, import_timm

    timm = import_timm()
    import timm.data  # noqa: F811 - the submodule, beside the package import_timm checked

    pretrained = timm.models.get_pretrained_cfg(architecture(model_name))
    config = timm.data.resolve_data_config(pretrained_cfg=pretrained.to_dict() if pretrained is not None else {})
    return from_timm_config(config, model_name)


def weights_contract(model_name: str, weights: str) -> Preprocessing:
    """The transforms of torchvision's ``weights`` enum for ``model_name`` (read, never downloaded)."""
    import torchvision

    from qexport.core.errors import did_you_mean
    from qexport.training.timm_models import is_timm_name

    if is_timm_name(model_name):
        raise QExportError(f"--weights-transforms names a torchvision weights recipe, and {model_name} is a timm model; "
                           "drop it (timm's own data config is used) or pass --mean/--std/--resize/--crop.")
    try:
        enum = torchvision.models.get_model_weights(model_name)
    except ValueError as err:
        raise QExportError(f"torchvision has no weights recipes for {model_name} ({err}); pass --mean/--std/--resize/--crop.") from err
    name = weights.split(".")[-1]
    names = [w.name for w in enum]
    if name not in names:
        raise QExportError(f"{enum.__name__} has no {name!r}{did_you_mean(name, names)}; choose one of {', '.join(names)}.")
    return from_torchvision_transforms(enum[name].transforms(), f"{enum.__name__}.{name}")
