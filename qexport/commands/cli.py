"""The `qexport` command line: thin wrappers that parse options and call library functions.

Every user-caused failure is a :class:`QExportError`, printed as one sentence on stderr with
exit code 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from qexport.core.envinfo import command_line
from qexport.core.errors import QExportError
from qexport.core.options import (BudgetConfig, CalibrationMethodConfig, FixedBatchConfig, QatConfig, SharedConfig,
                                     TargetConfig, option_default, option_flag, option_help)
from qexport.training.recipe import TrainConfig
from qexport.runtimes.results import RowStatus
from qexport.runtimes.bench_options import BenchOptions, ScenarioSettings
from qexport.runtimes.tuning import TuneOptions
from qexport.core.matrix import ClusterOptions, ZooOptions
from qexport.commands.preprocessing_options import takes_preprocessing_flags
from qexport.commands.recommend import RecommendOptions
from qexport.core.preprocessing_flags import PreprocessingFlags


def config_option(section: type, name: str, *short: str, as_text: bool = False, **settings):
    """The typer option of an options-dataclass field: its default, flag and help live on the field
    (see qexport/core/options.py), so no default is written twice. ``as_text``: the command line takes
    the default as comma-separated text (a tuple field)."""
    default = option_default(section, name)
    if as_text and default is not None:
        default = ",".join(map(str, default))
    return typer.Option(default, option_flag(section, name), *short, help=option_help(section, name), **settings)


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
# Help text is Rich markup: a literal [extra] needs its bracket escaped, or Rich drops it as a tag.
ModelOpt = typer.Option("resnet18", "--model", "-m", help="torchvision classifier name, or timm:<architecture> with `pip install 'qexport\\[timm]'` (see `qexport train --list-models`).")
BuildModelOpt = typer.Option(None, "--model", "-m", help="torchvision classifier name, or timm:<architecture> with `pip install 'qexport\\[timm]'` (see `qexport train --list-models`). Default: the one a qexport --checkpoint records, else resnet18.")
DataOpt = typer.Option("cifar10", "--data", help="Data source: cifar10, imagefolder (your own train/ val/ tree) or synthetic (smoke runs only).")
DataDirOpt = typer.Option(None, "--data-dir", envvar="QEXPORT_DATA_DIR", help=DATA_HELP)
ImageSizeOpt = typer.Option(None, "--image-size", help="imagefolder: the input size `qexport train` prepares by default (the shorter side to size/0.875, then a centre crop of size; default 224); a build takes the checkpoint's own preprocessing. synthetic: the size it is generated at.")
TrainSamplesOpt = typer.Option(None, "--train-samples", help="Use a seeded subset of this many training images (quick runs; recorded in metadata); --data synthetic generates this many.")
TestSamplesOpt = typer.Option(None, "--test-samples", help="Use a seeded subset of this many test images (quick runs; recorded in metadata); --data synthetic generates this many.")
SeedOpt = config_option(SharedConfig, "seed")
TrainDeviceOpt = typer.Option("auto", "--device", help="Where training runs: auto (a CUDA GPU when torch sees one, else the CPU), cpu or cuda. Exported artifacts are always built from the CPU model.")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars on stderr.")
# The input contract (see qexport.training.contract for the order of its sources)


@app.callback()
def _root(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors.")) -> None:
    _state["debug"] = debug


@app.command()
def info(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Show library versions, the CPU and the ISA extensions int8/bf16 kernels use, and any GPU."""
    from qexport.commands import report

    report.print_info(as_json=as_json)


@app.command()
def setup(
    runtime: str = typer.Argument(..., help="The runtime whose environment to create: ipex (IPEX 2.8.0 needs torch 2.8, so it cannot share qexport's environment)."),
    into: Optional[Path] = typer.Option(None, "--into", help="Folder for the environment (default: qexport's per-user data folder, where build, bench and verify look; elsewhere, set QEXPORT_IPEX_PYTHON to its bin/python)."),
) -> None:
    """Create the environment of a runtime that needs its own Python (a few GB of downloads, minutes).

    Example: `qexport setup ipex`, then `qexport build --only ipex`."""
    from qexport.core.progress import say
    from qexport.runtimes.foreign import create_environment

    create_environment(runtime, into, say=say)


@app.command()
@takes_preprocessing_flags()
def train(
    model: str = ModelOpt,
    data: str = DataOpt,
    data_dir: Optional[Path] = DataDirOpt,
    image_size: Optional[int] = ImageSizeOpt,
    epochs: int = config_option(TrainConfig, "epochs"),
    batch_size: int = config_option(TrainConfig, "batch_size"),
    lr: float = config_option(TrainConfig, "max_lr"),
    optimizer: str = config_option(TrainConfig, "optimizer"),
    seed: int = SeedOpt,
    train_samples: Optional[int] = TrainSamplesOpt,
    test_samples: Optional[int] = TestSamplesOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Checkpoint path (default checkpoints/<model>-<data>.pt)."),
    val_fraction: float = config_option(TrainConfig, "validation_fraction"),
    list_models: bool = typer.Option(False, "--list-models", help="List the accepted model names and exit."),
    device: str = TrainDeviceOpt,
    progress: bool = ProgressOpt,
    flags: PreprocessingFlags = None,
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start from this checkpoint's weights (same --model and classes) instead of a random initialisation, e.g. one trained at a smaller --resize: progressive resizing. The one-cycle schedule runs again over --epochs; the checkpoint records where it started and the time of every stage."),
) -> None:
    """Train the FP32 model, evaluate it on the test split and write a checkpoint with metadata.

    The checkpoint records the preprocessing it trained with, which every build from it then uses.
    By default that is the train split's mean and std at the data's size (CIFAR-10: 32 px; an image
    folder: the shorter side to 256, a centre crop of 224). Example at 224 px on CIFAR-10:
    `qexport train --model resnet50 --resize 224x224`. Faster at 224 px on a CPU: train at 64 px,
    then go on at 224 px with `--init-from checkpoints/<the 64 px one>.pt --epochs 1`. A vision
    transformer from scratch: `--model timm:vit_tiny_patch16_224 --optimizer adamw --lr 0.001`."""
    from qexport.commands import pipeline
    from qexport.training.train import resolve_device

    if list_models:
        from qexport.training.models import accepted_model_names

        typer.echo("\n".join(accepted_model_names()))
        return
    from qexport.training.models import check_model_name

    check_model_name(model)  # fail on an unknown name before spending time on data
    train_device = resolve_device(device)
    init_sha256 = _sha256_or_refuse(init_from)
    dataset = pipeline.training_data(model, pipeline.open_data(data, data_dir, image_size, train_samples, test_samples, seed),
                                     flags, image_size)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, max_lr=lr, optimizer=optimizer, seed=seed,
                         validation_fraction=val_fraction, init_sha256=init_sha256)
    path = out or pipeline.default_checkpoint_path(model, dataset)
    pipeline.train_checkpoint(model, dataset, config, path, show_progress=progress, device=train_device, init_from=init_from)


def _sha256_or_refuse(path: Optional[Path]) -> Optional[str]:
    """The checksum of --init-from's file; a missing file is one sentence before any data is read."""
    if path is None:
        return None
    if not path.is_file():
        raise QExportError(f"--init-from {path} does not exist; pass a checkpoint written by `qexport train`.")
    from qexport.core.fsutil import sha256_file

    return sha256_file(path)


@app.command()
@takes_preprocessing_flags(build=True)
def build(
    all_families: bool = typer.Option(False, "--all", help="Build every registered artifact family."),
    only: Optional[str] = typer.Option(None, "--only", help="Comma-separated families or prefixes, e.g. 'onnx,torchscript-int8-static'. See --list."),
    list_families: bool = typer.Option(False, "--list", help="List the artifact families and exit."),
    skip: Optional[str] = typer.Option(None, "--skip", help="Comma-separated families or prefixes to leave out, e.g. 'pt2e-int8-qat,torchscript-int8-qat' (the QAT families fine-tune for a whole epoch each)."),
    out: Path = typer.Option(Path("artifacts"), "--out", "-o", help="Output folder."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", "-c", help="FP32 checkpoint (qexport or bare state_dict). Without it, trains first or reuses an up-to-date one."),
    model: Optional[str] = BuildModelOpt,
    data: str = DataOpt,
    data_dir: Optional[Path] = DataDirOpt,
    image_size: Optional[int] = ImageSizeOpt,
    calibration_samples: int = config_option(SharedConfig, "calibration_samples"),
    target_cpu: str = config_option(TargetConfig, "target_cpu"),
    calibration_method: str = config_option(CalibrationMethodConfig, "calibration_method"),
    qat_epochs: int = config_option(QatConfig, "qat_epochs"),
    eval_samples: Optional[int] = config_option(SharedConfig, "eval_samples"),
    max_accuracy_drop: float = config_option(BudgetConfig, "max_accuracy_drop"),
    budget_samples: int = config_option(BudgetConfig, "budget_samples"),
    budget_verdict: str = config_option(BudgetConfig, "budget_verdict"),
    executorch_batch: int = config_option(FixedBatchConfig, "executorch_batch"),
    val_dir: Optional[Path] = typer.Option(None, "--val-dir", help="Folder of <class>/ images the model never trained on, to measure the accuracy budget on. Needed for a checkpoint qexport did not train (which records no validation split); without it the budget uses training images and says it is likely optimistic."),
    epochs: int = typer.Option(option_default(TrainConfig, "epochs"), "--epochs", help="Training epochs when no checkpoint is given."),
    seed: int = SeedOpt,
    train_samples: Optional[int] = TrainSamplesOpt,
    test_samples: Optional[int] = TestSamplesOpt,
    force: bool = typer.Option(False, "--force", help="Rebuild artifacts even when up to date."),
    retrain: bool = typer.Option(False, "--retrain", help="Without --checkpoint: replace a checkpoint at the default path that was trained with another recipe or data (otherwise the build refuses and says why it is not reused)."),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help="Families built at once, each in its own process. Much of a build is one core's work (tracing, compiling), so 2 on 2 or more cores saves time; each family's 'built in' seconds then include sharing the cores."),
    device: str = TrainDeviceOpt,
    progress: bool = ProgressOpt,
    flags: PreprocessingFlags = None,
) -> None:
    """Build deployment artifacts (TorchScript, ONNX, pt2e/AOTInductor...) with manifests into --out.

    Every artifact is measured and handed over with the preprocessing its model was trained with:
    the checkpoint's record (`qexport train` writes it), timm's data config for timm:<name>, a
    torchvision weights recipe (--weights-transforms IMAGENET1K_V2), or --mean/--std/--resize/--crop.
    A bare state_dict with none of these is refused. Example for a torchvision ResNet50 trained the
    ImageNet way: `qexport build --all --model resnet50 --checkpoint r50.pt --data imagefolder
    --data-dir DIR --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --resize 256 --crop 224`."""
    from qexport.exporter import FAMILIES, BuildOptions, select_families
    from qexport.exporter.build import BuildStatus, build_families
    from qexport.commands import pipeline, report
    from qexport.core.fsutil import ensure_writable_dir
    from qexport.training.models import DEFAULT_MODEL, check_model_name
    from qexport.training.train import resolve_device

    if list_families:
        report.print_families(FAMILIES.values(), target_cpu)
        return
    if not all_families and not only:
        raise QExportError("Say what to build: --all, or --only with names from `qexport build --list`.")
    options = BuildOptions(calibration_samples=calibration_samples, calibration_method=calibration_method,
                           qat_epochs=qat_epochs, seed=seed, eval_samples=eval_samples, target_cpu=target_cpu,
                           max_accuracy_drop=max_accuracy_drop, budget_samples=budget_samples,
                           budget_verdict=budget_verdict, executorch_batch=executorch_batch)
    families = select_families(None if all_families else list(_names(only) or ()))
    if skip:
        from qexport.core.selection import match_keys

        left_out = set(match_keys(_names(skip), FAMILIES))
        families = [family for family in families if family.key not in left_out]
    ensure_writable_dir(out)
    train_device = resolve_device(device)
    if checkpoint is None:
        model = model or DEFAULT_MODEL
        check_model_name(model)  # fail on an unknown name before loading data
    dataset = pipeline.open_data(data, data_dir, image_size, train_samples, test_samples, seed)
    ckpt = pipeline.resolve_checkpoint(model, dataset, checkpoint, TrainConfig(epochs=epochs, seed=seed), progress,
                                      train_device, retrain=retrain, flags=flags)
    ctx = pipeline.build_context(model, dataset, ckpt, options, progress, val_dir=val_dir, flags=flags)
    outcomes = build_families(ctx, families, out, force=force, debug=_state["debug"], jobs=jobs)
    report.print_build(outcomes, out)
    failed = [o for o in outcomes if o.status is BuildStatus.FAILED]
    if failed:
        raise typer.Exit(1)


def _int_list(text: str | None, flag: str) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise QExportError(f"{flag} takes comma-separated integers, e.g. 1,32,128; got {text!r}.") from None


@app.command()
def bench(
    directory: Path = typer.Argument(Path("artifacts"), help="Folder written by `qexport build`."),
    threads: int = config_option(BenchOptions, "threads"),
    cores: Optional[str] = config_option(BenchOptions, "cores"),
    batch_sizes: str = config_option(BenchOptions, "batch_sizes", as_text=True),
    rounds: int = config_option(BenchOptions, "rounds"),
    warmup: int = config_option(BenchOptions, "warmup"),
    min_count: int = config_option(BenchOptions, "min_count"),
    min_seconds: float = config_option(BenchOptions, "min_seconds"),
    eval_samples: Optional[int] = config_option(BenchOptions, "eval_samples"),
    device: str = config_option(BenchOptions, "device"),
    timeout: float = config_option(BenchOptions, "timeout"),
    allow_modified: bool = config_option(BenchOptions, "allow_modified"),
    only: Optional[str] = config_option(BenchOptions, "only"),
    cpu_fp16: bool = config_option(BenchOptions, "cpu_fp16"),
    data: Optional[str] = typer.Option(None, "--data", help="Data to score accuracy on: cifar10, imagefolder or synthetic (default: what the manifests record). Image size, mean/std and classes always come from the manifests."),
    data_dir: Optional[Path] = typer.Option(None, "--data-dir", help="Folder of that data (default: an image folder's recorded path when it still exists, else QEXPORT_DATA_DIR, else ./data)."),
    no_accuracy: bool = typer.Option(False, "--no-accuracy", help="Skip accuracy (timing, size and memory only)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Where bench.json, bench.md and plots go (default: DIRECTORY)."),
    scenario: Optional[str] = typer.Option(None, "--scenario", help="MLPerf LoadGen scenarios after the tight loop: single-stream, multi-stream, server, offline (comma-separated) or all. LoadGen's logs go to OUT/loadgen/<family>/<scenario>."),
    scenario_seconds: float = config_option(ScenarioSettings, "min_duration_s"),
    target_latency_ms: float = config_option(ScenarioSettings, "target_latency_ms"),
    server_steps: int = config_option(ScenarioSettings, "server_steps"),
    mlperf_durations: bool = config_option(ScenarioSettings, "official"),
    instancing: str = config_option(ScenarioSettings, "instancing"),
    seed: int = SeedOpt,
    ray: Optional[str] = config_option(ClusterOptions, "address"),
    per_cpu_class: bool = config_option(ClusterOptions, "per_cpu_class"),
    cpu_class: Optional[str] = config_option(ClusterOptions, "cpu_classes", as_text=True),
) -> None:
    """Measure every artifact in DIRECTORY in its own pinned worker: latency, throughput, size, memory, accuracy.

    The default is a tight loop (warm-up, then timed calls back to back). --scenario adds MLPerf
    LoadGen runs per artifact: single-stream p90, multi-stream p99 (8 samples per query), the peak
    server QPS whose p99 stays under --target-latency-ms, offline throughput; VALID or why not.

    On a Ray cluster, `--ray HEAD:6379 --per-cpu-class` benches the folder on one node of each CPU
    class and writes OUT/bench-classes.md: the file to ship per class and batch size, and where that
    choice changes between classes.
    """
    from qexport.commands import benchreport
    from qexport.core.progress import say
    from qexport.core.index import discover
    from qexport.runtimes.harness import BenchOptions, bench_directory
    from qexport.runtimes.evaluation_set import evaluation_data

    options = BenchOptions(threads=threads, cores=_int_list(cores, "--cores"), rounds=rounds,
                           batch_sizes=_int_list(batch_sizes, "--batch-sizes") or (), warmup=warmup,
                           min_count=min_count, min_seconds=min_seconds, eval_samples=eval_samples, device=device,
                           timeout=timeout, allow_modified=allow_modified, cpu_fp16=cpu_fp16,
                           only=tuple(o.strip() for o in only.split(",")) if only else None,
                           scenarios=_scenario_settings(scenario, scenario_seconds, target_latency_ms, server_steps,
                                                        mlperf_durations, _int_list(cores, "--cores"), instancing),
                           loadgen_dir=str((out or directory) / "loadgen") if scenario else None)
    cluster = ClusterOptions(address=ray, per_cpu_class=per_cpu_class, cpu_classes=_names(cpu_class))
    if (cluster.address or cluster.per_cpu_class) and not (cluster.address and cluster.per_cpu_class):
        raise QExportError("bench on a cluster measures per CPU class: pass both --ray ADDRESS and --per-cpu-class.")
    entries = discover(directory)
    if cluster.address:
        _bench_per_class(directory, out or directory, options, cluster, entries, data, data_dir, no_accuracy, seed)
        return
    dataset = None if no_accuracy else evaluation_data(entries, data, data_dir)

    def report_progress(number: int, total: int, row, round_index: int, rounds: int) -> None:
        say(f"round {round_index + 1}/{rounds} [{number + 1}/{total}] {row.file}"
            + (f" — {row.status}: {row.reason}" if row.status is not RowStatus.OK else ""))

    doc = bench_directory(directory, options, dataset, seed=seed, progress=report_progress, entries=entries)
    written = benchreport.write_outputs(doc, out or directory, {m.family: m for _, m in entries})
    benchreport.print_bench(doc)
    say("wrote " + ", ".join(str(p) for p in written))
    if any(row.status is RowStatus.FAILED for row in doc.rows):
        raise typer.Exit(1)


@app.command()
def tune(
    directory: Path = typer.Argument(Path("artifacts"), help="Folder written by `qexport build`."),
    batch_sizes: str = config_option(TuneOptions, "batch_sizes", as_text=True),
    rounds: int = config_option(TuneOptions, "rounds"),
    min_seconds: float = config_option(TuneOptions, "min_seconds"),
    only: Optional[str] = config_option(BenchOptions, "only"),
    threads: int = config_option(BenchOptions, "threads"),
    cores: Optional[str] = config_option(BenchOptions, "cores"),
    timeout: float = config_option(BenchOptions, "timeout"),
    list_settings: bool = typer.Option(False, "--list", help="Show each artifact's runtime settings and the candidates this CPU would try, then exit (nothing is measured or written)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Measure and write tune.md/tune.json, but leave the manifests as they are."),
    try_settings: Optional[list[str]] = typer.Option(None, "--try", help="Time only this setting=value (repeatable), e.g. --try onednn_max_cpu_isa=AVX512_CORE_VNNI, on the artifacts whose runtime has it; see --list."),
) -> None:
    """Find the runtime settings that make each artifact faster on this CPU class, and record them.

    Each candidate changes one setting from the defaults (the oneDNN ISA cap -- AMX off --, OpenVINO's
    performance hint and precision, ONNX Runtime's graph level, execution mode and spinning,
    ExecuTorch's thread pool) and is timed against the defaults in the same interleaved, fresh-process
    rounds as `qexport bench`. It is kept only when its paired 95 % interval shows it faster; a tie keeps
    the defaults; a setting that changes outputs beyond the golden tolerance or crashes is rejected.
    Winners go into each manifest for this CPU class and are applied by bench, verify and LoadGen on
    hosts of that class. Example: `qexport tune artifacts/ --only int8 --batch-sizes 1,32`."""
    from qexport.commands.tune import TUNE_MD, run_tune, write_report
    from qexport.core.hardware import host_cpu
    from qexport.core.progress import say

    tune_options = TuneOptions(batch_sizes=_int_list(batch_sizes, "--batch-sizes") or (), rounds=rounds,
                               min_seconds=min_seconds)
    options = BenchOptions(threads=threads, cores=_int_list(cores, "--cores"), rounds=rounds,
                           batch_sizes=tune_options.batch_sizes, min_seconds=min_seconds, timeout=timeout,
                           only=_names(only))
    cpu = host_cpu()
    if list_settings:
        typer.echo("\n".join(_settings_lines(directory, options, cpu)))
        return
    doc = run_tune(directory, tune_options, options, cpu, write=not dry_run,
                   progress=lambda done, total, what: say(f"[{done}/{total}] {what}"), asked=_pairs(try_settings))
    written = write_report(doc, directory)
    typer.echo((directory / TUNE_MD).read_text())
    say("wrote " + ", ".join(map(str, written)) + ("" if dry_run else " and the kept settings into each manifest"))


def _pairs(texts: Optional[list[str]]) -> Optional[list[tuple[str, str]]]:
    """--try name=value, each split once at '='."""
    if not texts:
        return None
    malformed = next((text for text in texts if "=" not in text), None)
    if malformed is not None:
        raise QExportError(f"--try takes setting=value, e.g. onednn_max_cpu_isa=AVX2; got {malformed!r}.")
    return [tuple(part.strip() for part in text.split("=", 1)) for text in texts]


def _settings_lines(directory: Path, options, cpu) -> list[str]:
    """`qexport tune --list`: each artifact's runtime, its declared settings and this CPU's candidates."""
    from qexport.core.index import discover
    from qexport.runtimes.harness import match_entries
    from qexport.runtimes.settings import settings_of

    lines = [f"CPU class: {cpu.isa_line()}"]
    for _, manifest in match_entries(discover(directory), options):
        lines.append(f"{manifest.family} ({manifest.runtime.name}):")
        for setting in settings_of(manifest.runtime.name) or ():
            tried = ", ".join(setting.candidates(cpu)) or "nothing on this CPU"
            lines.append(f"  {setting.name} (default {setting.default}; tries {tried}): {setting.help}")
        if not settings_of(manifest.runtime.name):
            lines.append("  no settings declared")
    return lines


def _scenario_settings(names: Optional[str], seconds: float, target_latency_ms: float, server_steps: int,
                       official: bool, cores, instancing: str):
    """The LoadGen settings --scenario asks for (None: the tight loop only)."""
    if not names:
        return None
    from qexport.runtimes.loadgen import INSTANCING, SCENARIOS
    from qexport.runtimes.bench_options import ScenarioSettings, usable_cores
    from qexport.core.selection import match_keys

    chosen = list(SCENARIOS) if names.strip() == "all" else \
        match_keys([n.strip() for n in names.split(",")], dict.fromkeys(SCENARIOS), "scenario")
    import importlib.util

    if importlib.util.find_spec("mlperf_loadgen") is None:
        raise QExportError("--scenario needs the MLPerf LoadGen: pip install 'qexport[loadgen]' (mlcommons-loadgen==6.0.17).")
    if seconds <= 0 or target_latency_ms <= 0 or server_steps < 1:
        raise QExportError("--scenario-seconds and --target-latency-ms must be positive, --server-steps at least 1.")
    if instancing not in INSTANCING:
        raise QExportError(f"--instancing must be one of {', '.join(INSTANCING)}, got {instancing!r}.")
    return ScenarioSettings(scenarios=chosen, min_duration_s=seconds, target_latency_ms=target_latency_ms,
                            server_steps=server_steps, official=official, cores=list(cores or usable_cores()),
                            instancing=instancing)


@app.command()
def verify(
    path: Path = typer.Argument(Path("artifacts"), help="An artifacts folder, an artifact file or its manifest."),
    public_key: Optional[Path] = typer.Option(None, "--public-key", help="Check the folder's signature (model.sig) against the signer's public key first; any difference refuses the folder."),
    certificate_chain: Optional[list[Path]] = typer.Option(None, "--certificate-chain", help="Check the signature against this certificate chain (repeatable) instead of a public key."),
) -> None:
    """Check each artifact's sha256, runtime version and golden outputs in its own runtime.

    With --public-key or --certificate-chain, the folder's OpenSSF model signature is checked
    before any manifest is trusted: a folder someone changed after signing is refused.
    """
    from rich.table import Table

    from qexport.core.progress import say
    from qexport.commands.report import console
    from qexport.commands.verify import verify_path

    if public_key or certificate_chain:
        from qexport.core.signing import TrustAnchor, verify_folder

        anchor = TrustAnchor(public_key, tuple(certificate_chain or ()))
        covered = verify_folder(path, anchor)
        say(f"signature: verified against {anchor.describe()} ({covered} files, none added, removed or changed)")
    checks = verify_path(path)
    table = Table(title=f"qexport verify {path}")
    for column in ("artifact", "runtime", "result", "detail"):
        table.add_column(column)
    for c in checks:
        table.add_row(c.file, c.runtime, "[green]pass[/green]" if c.passed else "[red]FAIL[/red]", c.detail)
    console.print(table)
    if not all(c.passed for c in checks):
        raise typer.Exit(1)


@app.command()
def pack(
    directory: Path = typer.Argument(Path("artifacts"), help="Folder written by `qexport build` (and `qexport bench`)."),
    output: Path = typer.Option(..., "--output", "-o", help="Bundle to write: NAME.tar.gz or NAME.zip."),
    sign_key: Optional[Path] = typer.Option(None, "--sign-key", help="Sign every file of the bundle with this PEM private key (OpenSSF Model Signing, model.sig). The key never enters the bundle."),
    certificate: Optional[Path] = typer.Option(None, "--certificate", help="With --sign-key: the key's signing certificate (certificate signing)."),
    chain: Optional[list[Path]] = typer.Option(None, "--certificate-chain", help="With --certificate: the chain up to the root (repeatable)."),
) -> None:
    """Bundle artifacts, manifests, golden data, bench results and a generated MODEL_CARD.md.

    The archive is deterministic (sorted entries, fixed times and owners): the same inputs give
    the same bytes (a signed bundle's signature differs per run). Artifacts that no longer match
    their manifest are refused.
    """
    from qexport.core.fsutil import ensure_writable_dir, sha256_file
    from qexport.commands.pack import pack as make_bundle
    from qexport.core.progress import say

    ensure_writable_dir(output.parent if str(output.parent) else Path("."))
    path, count = make_bundle(directory, output, _signing_key(sign_key, certificate, chain))
    say(f"wrote {path} ({count} files, {path.stat().st_size / 1e6:.1f} MB, sha256 {sha256_file(path)})")


@app.command()
def sign(
    directory: Path = typer.Argument(..., help="The folder to sign (an artifacts folder, or an extracted bundle)."),
    key: Path = typer.Option(..., "--key", help="PEM private key, e.g. from `openssl ecparam -name prime256v1 -genkey -noout -out key.pem`."),
    certificate: Optional[Path] = typer.Option(None, "--certificate", help="The key's signing certificate (certificate signing)."),
    chain: Optional[list[Path]] = typer.Option(None, "--certificate-chain", help="With --certificate: the chain up to the root (repeatable)."),
) -> None:
    """Sign every file in DIRECTORY (OpenSSF Model Signing): writes DIRECTORY/model.sig.

    Receivers check it with `qexport verify DIRECTORY --public-key pub.pem`, or with the upstream
    `model_signing verify key DIRECTORY --signature DIRECTORY/model.sig --public_key pub.pem`.
    """
    from qexport.core.progress import say
    from qexport.core.signing import sign_folder

    if not directory.is_dir():
        raise QExportError(f"{directory} is not a folder; sign the folder `qexport build` wrote, or pack --sign-key.")
    signature = sign_folder(directory, _signing_key(key, certificate, chain))
    say(f"wrote {signature}: covers every file in {directory}")


def _signing_key(key: Optional[Path], certificate: Optional[Path], chain: Optional[list[Path]]):
    """The signing key the options describe (None: do not sign); warns about a key others can read."""
    from qexport.core.signing import SigningKey, private_key_warning, readable_file

    if key is None:
        if certificate or chain:
            raise QExportError("--certificate and --certificate-chain sign together with --sign-key KEY.")
        return None
    warning = private_key_warning(readable_file(key, "private key"))
    if warning:
        print(f"qexport: {warning}", file=sys.stderr)
    return SigningKey(key, certificate, tuple(chain or ()))


@app.command()
def compare(files: list[Path] = typer.Argument(..., help="bench.json files from different machines or settings.")) -> None:
    """Each run's p50 change against the first run's, per artifact and batch, with its 95 % interval and a verdict."""
    from rich.table import Table

    from qexport.commands import benchcompare
    from qexport.commands.report import console

    header, body = benchcompare.compare(files)
    table = Table(title="qexport compare")
    for column in header:
        table.add_column(column)
    for cells in body:
        table.add_row(*cells)
    console.print(table)


@app.command()
def recommend(
    directory: Path = typer.Argument(Path("artifacts"), help="The folder `qexport bench` measured (its bench.json and manifests)."),
    target: Optional[str] = typer.Option(None, "--target", help="Only these targets, comma-separated: latency@B (B a batch size the bench measured), throughput, size, cold-start. Default: all."),
    max_accuracy_drop: float = config_option(RecommendOptions, "max_accuracy_drop"),
    runtimes: Optional[str] = config_option(RecommendOptions, "runtimes"),
    target_cpu: Optional[str] = config_option(RecommendOptions, "target_cpu"),
) -> None:
    """Which file to ship for each deployment target, from bench.json and the manifests alone.

    The leader's equals -- artifacts whose paired 95 % interval against it contains 1 -- are listed,
    and the tie is broken by size, then load time, never by the p50 alone. Example:
    `qexport recommend artifacts/ --target latency@1,cold-start --runtimes onnxruntime,openvino`."""
    from qexport.commands.recommend import pareto_lines, recommend as choose, recommendation_lines
    from qexport.core.index import discover
    from qexport.runtimes.results import load_bench

    bench_file = directory / "bench.json"
    if not bench_file.is_file():
        raise QExportError(f"{bench_file} does not exist; run `qexport bench {directory}` first.")
    options = RecommendOptions(max_accuracy_drop=max_accuracy_drop, runtimes=_names(runtimes), target_cpu=target_cpu)
    manifests = {manifest.family: manifest for _, manifest in discover(directory)}
    doc = load_bench(bench_file)
    picks, left_out = choose(doc, manifests, options, _names(target))
    typer.echo("\n".join(recommendation_lines(picks, left_out, options) + ["", *pareto_lines(doc)]))


def _names(text: Optional[str]) -> Optional[tuple[str, ...]]:
    return tuple(n.strip() for n in text.split(",") if n.strip()) if text else None


def _bench_per_class(directory: Path, out: Path, options, cluster: ClusterOptions, entries, data, data_dir,
                     no_accuracy: bool, seed: int) -> None:
    """bench --ray --per-cpu-class: one node per CPU class, one section each, a cross-class table."""
    from qexport.commands.bench_classes import PerClassRequest, run_per_class, write_per_class
    from qexport.commands.cluster import by_class, chosen_classes, cluster_nodes, connect
    from qexport.core.progress import say

    connect(cluster.address)
    nodes = chosen_classes(by_class(cluster_nodes()), cluster.cpu_classes)
    data_dir = data_dir or os.environ.get("QEXPORT_DATA_DIR")  # the nodes' tasks do not share this shell
    request = PerClassRequest(options, data, str(Path(data_dir).resolve()) if data_dir else None, no_accuracy, seed,
                              command=command_line(), directory=str(directory))
    benches = run_per_class(directory, request, nodes, say)
    written = write_per_class(benches, out, {m.family: m for _, m in entries})
    say("wrote " + ", ".join(str(p) for p in written if p.suffix == ".md"))


@app.command()
@takes_preprocessing_flags()
def zoo(
    models: Optional[str] = config_option(ZooOptions, "models", as_text=True, show_default=False),
    only: Optional[str] = config_option(ZooOptions, "families", as_text=True),
    out: Path = typer.Option(Path("zoo"), "--out", "-o", help="Folder for checkpoints/, one artifact folder per architecture, compatibility.md and compatibility.json."),
    data: str = DataOpt,
    data_dir: Optional[Path] = DataDirOpt,
    image_size: Optional[int] = ImageSizeOpt,
    train_samples: int = config_option(ZooOptions, "train_samples"),
    test_samples: int = config_option(ZooOptions, "test_samples"),
    epochs: int = config_option(ZooOptions, "epochs"),
    calibration_samples: int = config_option(ZooOptions, "calibration_samples"),
    max_accuracy_drop: float = config_option(ZooOptions, "max_accuracy_drop"),
    budget_verdict: str = config_option(ZooOptions, "budget_verdict"),
    rounds: int = config_option(ZooOptions, "rounds"),
    min_seconds: float = config_option(ZooOptions, "min_seconds"),
    jobs: int = config_option(ZooOptions, "jobs", "-j", min=1),
    seed: int = SeedOpt,
    progress: bool = ProgressOpt,
    ray: Optional[str] = config_option(ClusterOptions, "address"),
    cpus_per_task: int = config_option(ClusterOptions, "cpus_per_task", min=1),
    flags: PreprocessingFlags = None,
) -> None:
    """Build a compatibility matrix: every architecture × every family, each cell built (int8 drop,
    batch-1 speed against that architecture's fastest fp32), skipped or failed with its reason.

    Each architecture trains briefly on a small seeded subset, so a 12-architecture matrix fits an
    afternoon on a 2-core host. Example: `qexport zoo --models timm:resnet50,timm:vit_tiny_patch16_224`.
    At the size users deploy, every architecture trains under the preprocessing flags given, e.g.
    `qexport zoo --resize 224x224 -o zoo-224` (a cell whose fp32 model stays below 40 % top-1 says
    that its drop is not meaningful). With `--ray HEAD:6379` each architecture is one task on a Ray
    cluster whose nodes share the --out folder; a rerun keeps the architectures already done."""
    from qexport.core.matrix import DEFAULT_MODELS
    from qexport.commands.zoo import run_zoo
    from qexport.core.progress import say

    chosen = tuple(m.strip() for m in models.split(",") if m.strip()) if models is not None else DEFAULT_MODELS
    options = ZooOptions(models=chosen, families=tuple(o.strip() for o in only.split(",") if o.strip()) if only else None,
                         data=data, image_size=image_size, train_samples=train_samples, test_samples=test_samples,
                         epochs=epochs, calibration_samples=calibration_samples, max_accuracy_drop=max_accuracy_drop,
                         budget_verdict=budget_verdict, rounds=rounds, min_seconds=min_seconds, jobs=jobs, seed=seed,
                         preprocessing=flags)
    command = command_line()
    if ray:
        from qexport.commands.zoo_ray import run_zoo_ray

        matrix = run_zoo_ray(options, ClusterOptions(address=ray, cpus_per_task=cpus_per_task), out, data_dir, command)
    else:
        matrix = run_zoo(options, out, data_dir, command, show_progress=progress)
    say(f"wrote {out / 'compatibility.md'} and {out / 'compatibility.json'} ({len(matrix.cells)} cells)")


INTERRUPTED = "Interrupted; nothing half-written was left behind (workers stopped, temporary files removed)."


def main() -> None:
    """Console-script entry point: run the app, turning user errors into one line + exit 2."""
    from qexport.core.progress import quiet_library_warnings

    quiet_library_warnings()
    _wide_help_when_piped()
    try:
        app()  # standalone: typer handles usage errors and --help, and calls sys.exit itself
    except QExportError as err:
        _fail(err, str(err), err.exit_code)
    except KeyboardInterrupt as err:
        _fail(err, INTERRUPTED, 130)
    except SystemExit as err:  # typer turns Ctrl-C into a bare exit 130; say what happened
        if err.code == 130:
            _fail(err, INTERRUPTED, 130)
        raise


def _wide_help_when_piped() -> None:
    """``--help`` through a pipe or into a file: rich would cut option names at 80 columns, and
    ``qexport build --help | grep budget`` would miss them. A terminal keeps its own width."""
    if not sys.stdout.isatty():
        import typer.rich_utils

        typer.rich_utils.MAX_WIDTH = typer.rich_utils.MAX_WIDTH or 250


def _fail(err: BaseException, message: str, code: int) -> None:
    if _state["debug"]:
        traceback.print_exception(err)
    print(f"qexport: error: {message}", file=sys.stderr)
    sys.exit(code)


if __name__ == "__main__":
    main()
