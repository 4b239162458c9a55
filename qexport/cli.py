"""The `qexport` command line: thin wrappers that parse options and call library functions.

Every user-caused failure is a :class:`QExportError`, printed as one sentence on stderr with
exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from qexport.errors import QExportError

app = typer.Typer(
    help="Export trained PyTorch classifiers to every deployment format and benchmark them honestly.\n\n"
    "Typical use: `qexport train` (or bring --checkpoint), `qexport build --all`, `qexport bench artifacts/`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
_state = {"debug": False}

DATA_HELP = "Folder holding the data (cifar10.npz, torchvision's cifar-10-batches-py, or train/ + val/ class folders). Env: QEXPORT_DATA_DIR; default ./data."
ModelOpt = typer.Option("resnet18", "--model", "-m", help="torchvision classifier name (see `qexport train --list-models`).")
DataOpt = typer.Option("cifar10", "--data", help="Data source: cifar10, imagefolder (your own train/ val/ tree) or synthetic (smoke runs only).")
DataDirOpt = typer.Option(None, "--data-dir", envvar="QEXPORT_DATA_DIR", help=DATA_HELP)
ImageSizeOpt = typer.Option(None, "--image-size", help="Resize imagefolder/synthetic images to this square size (imagefolder default 224).")
TrainSamplesOpt = typer.Option(None, "--train-samples", help="Use a seeded subset of this many training images (quick runs; recorded in metadata).")
TestSamplesOpt = typer.Option(None, "--test-samples", help="Use a seeded subset of this many test images (quick runs; recorded in metadata).")
SeedOpt = typer.Option(0, "--seed", help="Seed for initialisation, shuffling, augmentation and subsets.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars on stderr.")


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors.")) -> None:
    _state["debug"] = debug


@app.command()
def info(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Show library versions, the CPU and the ISA extensions int8/bf16 kernels use, and any GPU."""
    from qexport import report

    report.print_info(as_json=as_json)


@app.command()
def train(
    model: str = ModelOpt,
    data: str = DataOpt,
    data_dir: Optional[Path] = DataDirOpt,
    image_size: Optional[int] = ImageSizeOpt,
    epochs: int = typer.Option(30, "--epochs", help="Training epochs (30 reaches the README's accuracy on CIFAR-10)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Mini-batch size."),
    lr: float = typer.Option(0.2, "--lr", help="Peak learning rate of the one-cycle schedule."),
    seed: int = SeedOpt,
    train_samples: Optional[int] = TrainSamplesOpt,
    test_samples: Optional[int] = TestSamplesOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Checkpoint path (default checkpoints/<model>-<data>.pt)."),
    list_models: bool = typer.Option(False, "--list-models", help="List the accepted model names and exit."),
    progress: bool = ProgressOpt,
) -> None:
    """Train the FP32 model, evaluate it on the test split and write a checkpoint with metadata."""
    from qexport import pipeline
    from qexport.train import TrainConfig

    if list_models:
        from qexport.models import classification_models

        typer.echo("\n".join(classification_models()))
        return
    from qexport.models import build_model

    build_model(model, 1)  # fail on an unknown name before spending time on data
    dataset = pipeline.open_data(data, data_dir, image_size, train_samples, test_samples, seed)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, max_lr=lr, seed=seed)
    path = out or pipeline.default_checkpoint_path(model, dataset)
    pipeline.train_checkpoint(model, dataset, config, path, show_progress=progress)


@app.command()
def build(
    all_families: bool = typer.Option(False, "--all", help="Build every registered artifact family."),
    only: Optional[str] = typer.Option(None, "--only", help="Comma-separated families or prefixes, e.g. 'onnx,torchscript-int8-static'. See --list."),
    list_families: bool = typer.Option(False, "--list", help="List the artifact families and exit."),
    out: Path = typer.Option(Path("artifacts"), "--out", "-o", help="Output folder."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="FP32 checkpoint (qexport or bare state_dict). Without it, trains first or reuses an up-to-date one."),
    model: str = ModelOpt,
    data: str = DataOpt,
    data_dir: Optional[Path] = DataDirOpt,
    image_size: Optional[int] = ImageSizeOpt,
    calibration_samples: int = typer.Option(512, "--calibration-samples", help="Seeded train-split images used to calibrate PTQ families."),
    calibration_method: str = typer.Option("minmax", "--calibration-method", help="ONNX int8 calibration: minmax, entropy or percentile."),
    qat_epochs: int = typer.Option(1, "--qat-epochs", help="Fine-tuning epochs of the QAT families."),
    eval_samples: Optional[int] = typer.Option(None, "--eval-samples", help="Measure accuracy on a seeded subset of the test split (default: all of it)."),
    epochs: int = typer.Option(30, "--epochs", help="Training epochs when no checkpoint is given."),
    seed: int = SeedOpt,
    train_samples: Optional[int] = TrainSamplesOpt,
    test_samples: Optional[int] = TestSamplesOpt,
    force: bool = typer.Option(False, "--force", help="Rebuild artifacts even when up to date."),
    progress: bool = ProgressOpt,
) -> None:
    """Build deployment artifacts (TorchScript, ONNX, pt2e/AOTInductor...) with manifests into --out."""
    from exporter import FAMILIES, BuildOptions, select_families
    from exporter.build import build_families
    from qexport import pipeline, report
    from qexport.fsutil import ensure_writable_dir
    from qexport.models import build_model
    from qexport.train import TrainConfig

    if list_families:
        report.print_families(FAMILIES.values())
        return
    if not all_families and not only:
        raise QExportError("Say what to build: --all, or --only with names from `qexport build --list`.")
    families = select_families(None if all_families else [n.strip() for n in only.split(",") if n.strip()])
    options = BuildOptions(calibration_samples=calibration_samples, calibration_method=calibration_method,
                           qat_epochs=qat_epochs, seed=seed, eval_samples=eval_samples)
    ensure_writable_dir(out)
    if checkpoint is None:
        build_model(model, 1)  # fail on an unknown name before loading data
    dataset = pipeline.open_data(data, data_dir, image_size, train_samples, test_samples, seed)
    ckpt = pipeline.resolve_checkpoint(model, dataset, checkpoint, TrainConfig(epochs=epochs, seed=seed), progress)
    ctx = pipeline.build_context(model, dataset, ckpt, options, progress)
    outcomes = build_families(ctx, families, out, force=force, debug=_state["debug"])
    report.print_build(outcomes, out)
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        raise typer.Exit(1)


def main() -> None:
    """Console-script entry point: run the app, turning user errors into one line + exit 2."""
    quiet_library_warnings()
    try:
        app()  # standalone: typer handles usage errors and --help, and calls sys.exit itself
    except QExportError as err:
        _fail(err, str(err), err.exit_code)
    except KeyboardInterrupt as err:
        _fail(err, "Interrupted; nothing half-written was left behind.", 130)


def quiet_library_warnings() -> None:
    """torch.jit / eager quantization deprecation notices say nothing a user can act on here
    (qexport already ships the torch.export path next to them); they would bury the report."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*(reduce_range|quantize_per_tensor|TypedStorage).*")


def _fail(err: BaseException, message: str, code: int) -> None:
    if _state["debug"]:
        traceback.print_exception(err)
    print(f"qexport: error: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
