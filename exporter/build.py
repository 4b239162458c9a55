"""Build orchestration shared by every family: up-to-date checks, atomic writes, measurement
in the artifact's own runtime, golden I/O, manifests and ``index.json``.

A family's build function only writes its file; everything a deployment team needs to trust
that file is produced here, identically for every family.
"""

from __future__ import annotations

import platform
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cached_property
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from qexport import runtimes
from qexport.manifest import (GOLDEN_ATOL, AccuracyBudget, ArtifactFile, BuildRecord, CompiledWith, DataInfo, FileRecord,
                               Evaluation, Failure,
                               Golden, Index, IndexEntry, InputSpec, Manifest, ModelInfo, OutputSpec, Requirements,
                               RuntimeSection, artifact_problem, find_manifests, golden_path, manifest_path,
                               read_manifest)
from qexport.documents import parse
from qexport.exporter.budget import HeldOut, fallback_sizes, not_found_note, over_budget_message
from qexport.exporter.capture import explain_capture_failure
from qexport.exporter.registry import EVAL_BATCH, BuildContext, BuildDetails, Family
from qexport import __version__
from qexport.data import Split, normalize, seeded_subset
from qexport.envinfo import cpu_info, git_commit, isa_summary, library_versions
from qexport.errors import QExportError, RuntimeMissing, describe_exception
from qexport.hardware import host_cpu
from qexport.fsutil import atomic_path, atomic_write_bytes, atomic_write_json, ensure_writable_dir, sha256_file
from qexport.progress import current_label, labelled, say
from qexport.train import predict, top1



@dataclass
class Outcome:
    family: str
    status: str  # built | up-to-date | skipped | failed
    file: str | None = None
    reason: str = ""
    manifest: Manifest | None = None


class Reference:
    """The eager fp32 model's logits on the evaluation split, computed once per build run."""

    def __init__(self, ctx: BuildContext):
        self.split = evaluation_split(ctx)
        self._ctx = ctx

    @cached_property
    def logits(self) -> torch.Tensor:
        return self._ctx.fp32_logits(self.split)


def evaluation_split(ctx: BuildContext) -> Split:
    """Always the **test** split (a seeded subset only when --eval-samples asks for one)."""
    n = ctx.options.eval_samples
    return seeded_subset(ctx.data.test, n, ctx.options.seed) if n and n < len(ctx.data.test) else ctx.data.test


def build_families(ctx: BuildContext, families: list[Family], out_dir: Path, force: bool = False,
                   debug: bool = False, jobs: int = 1) -> list[Outcome]:
    """Build each family; one failing never stops the others. ``jobs`` > 1 builds that many at
    once, each still in its own child process, with every status line labelled by its family."""
    ensure_writable_dir(out_dir)
    reference, held_out = Reference(ctx), HeldOut(ctx)

    def build(family: Family) -> Outcome:
        return build_or_record(ctx, family, out_dir, reference, held_out, force, debug)

    _cancelled.clear()
    outcomes = [build(f) for f in families] if jobs <= 1 else build_concurrently(build, families, jobs)
    write_index(out_dir, ctx.model_name, outcomes)
    return outcomes


_cancelled = threading.Event()  # set on Ctrl-C: concurrent builds stop and discard what they wrote


def build_concurrently(build: Callable[[Family], Outcome], families: list[Family], jobs: int) -> list[Outcome]:
    """``build`` for every family on ``jobs`` threads, outcomes in the families' order. Ctrl-C
    reaches the main thread only: it tells the others to stop (their children are killed, their
    temporary files removed) and waits for them before the interrupt goes on."""
    def labelled_build(family: Family) -> Outcome:
        with labelled(family.key):
            return build(family)

    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="qexport-build") as pool:
        futures = [pool.submit(labelled_build, family) for family in families]
        try:
            return [future.result() for future in futures]
        except BaseException:
            _cancelled.set()
            for future in futures:
                future.cancel()
            raise


def stop_if_cancelled() -> None:
    if _cancelled.is_set():
        raise KeyboardInterrupt


def build_or_record(ctx: BuildContext, family: Family, out_dir: Path, reference: Reference, held_out: HeldOut,
                    force: bool, debug: bool) -> Outcome:
    """One family's outcome: built, up to date, skipped (with the reason) or failed (with one sentence)."""
    problem = family.build_problem() or family.model_problem(ctx.model_name)
    name = "" if current_label() else f" [bold]{family.key}[/bold]"  # labelled lines already name it
    if problem:  # ipex-bf16 on an AVX2-only host, eager int8 for a model without a quantizable twin
        say(f"[yellow]skipped[/yellow]{name}: {problem}")
        return Outcome(family.key, "skipped", reason=problem)
    say(f"{name.lstrip()} → {family.filename(ctx.model_name)}")
    try:
        return build_one(ctx, family, out_dir, reference, held_out, force)
    except RuntimeMissing as err:  # e.g. no IPEX environment: say how to get it, build the rest
        say(f"  [yellow]skipped[/yellow]: {err}")
        return Outcome(family.key, "skipped", reason=str(err))
    except QExportError as err:
        outcome = Outcome(family.key, "failed", reason=str(err))
    except Exception as err:  # an exporter bug must not take the other families down
        if debug:
            traceback.print_exc()
        outcome = Outcome(family.key, "failed", reason=describe_exception(err))
    say(f"  [red]failed[/red]: {outcome.reason}")
    return outcome


def build_one(ctx: BuildContext, family: Family, out_dir: Path, reference: Reference, held_out: HeldOut,
              force: bool) -> Outcome:
    final = out_dir / family.filename(ctx.model_name)
    options = family.relevant_options(ctx.options)
    if not force and is_up_to_date(final, ctx.checkpoint_sha256, options):
        say("  up to date (use --force to rebuild)")
        return Outcome(family.key, "up-to-date", final.name, manifest=read_manifest(manifest_path(final)))
    started = time.perf_counter()
    with atomic_path(final, family.companions) as tmp:
        details, budget = build_within_budget(family, ctx, tmp, held_out)
        measured = measure(family, tmp, ctx, reference, details)
        stop_if_cancelled()  # interrupted meanwhile: the temporary file goes, nothing is written
    seconds = time.perf_counter() - started
    golden = golden_path(final)
    write_golden(golden, measured.golden_inputs, measured.golden_outputs)
    manifest = make_manifest(ctx, family, final, details, measured.evaluation, options, seconds, golden, budget)
    atomic_write_json(manifest_path(final), manifest.to_dict())
    ev = manifest.evaluation
    say(f"  built in {seconds:.0f} s: {manifest.artifact.total_size_bytes / 1e6:.1f} MB, "
        f"top-1 {fmt_pct(ev.top1)} (fp32 {fmt_pct(ev.fp32_reference_top1)}), "
        f"agreement {fmt_pct(ev.top1_agreement_with_fp32)}")
    return Outcome(family.key, "built", final.name, manifest=manifest)


def run_family(family: Family, ctx: BuildContext, path: Path) -> BuildDetails:
    """The family's build function, in a child process unless it already builds in another interpreter."""
    return build_in_child(family, ctx, path) if family.isolate else build_explained(family, ctx, path)


def build_explained(family: Family, ctx: BuildContext, path: Path) -> BuildDetails:
    """``family.build``, with an error raised inside the model's code turned into one sentence
    naming the layer (exporter/capture.py) -- where the traceback still exists: in the child for
    isolated families, which pickles only the exception."""
    try:
        return family.build(ctx, path)
    except Exception as err:
        explained = explain_capture_failure(err, family.key)
        if explained is err:
            raise
        raise explained from err


def build_within_budget(family: Family, ctx: BuildContext, path: Path,
                        held_out: HeldOut) -> tuple[BuildDetails, AccuracyBudget | None]:
    """Build, and hold an int8 family to ``--max-accuracy-drop`` (see exporter/budget.py): over
    budget, a family that can fall back is rebuilt with the 1, 2, 4, ... most sensitive layers in
    float until it fits; one that still misses raises, so nothing over budget is ever written."""
    details = run_family(family, ctx, path)
    if family.precision != "int8":
        return details, None
    if not len(held_out.split):
        details.notes.append(f"Accuracy budget not checked: the train split has no images beyond the "
                             f"{ctx.options.calibration_samples} used for calibration.")
        return details, None
    limit, kept = ctx.options.max_accuracy_drop, ()
    attempts = [held_out.attempt(runner_logits(family, path, details, held_out.split, ctx.data)[1], 0)]
    if attempts[-1].drop_pt > limit and family.fallback:
        for size in fallback_sizes(len(held_out.ranking)):
            asked = tuple(held_out.ranking[:size])
            say(f"  {attempts[-1].drop_pt:.2f} pt lost (budget {limit:g}): rebuilding with the {size} most "
                "sensitive layers in float")
            details = run_family(family, replace(ctx, keep_float=asked), path)
            kept = tuple(layer for layer in asked if layer not in details.float_not_found)
            if not kept:  # rebuilding again would build the same artifact again
                raise QExportError(f"{family.key} loses {attempts[-1].drop_pt:.2f} top-1 points, over --max-accuracy-drop "
                                   f"{limit:g}, and none of the {size} layers to keep in float ({asked[0]}, ...) is named "
                                   f"in its graph, so its fallback cannot help -- raise the budget or leave {family.key} out.")
            logits = runner_logits(family, path, details, held_out.split, ctx.data)[1]
            attempts.append(held_out.attempt(logits, len(kept)))
            if attempts[-1].drop_pt <= limit:
                break
    details.notes.extend(not_found_note(details.float_not_found))
    budget = held_out.record(attempts, kept, shares=family.fallback, fine_tuned="qat_epochs" in family.option_keys)
    if not budget.met:
        raise QExportError(over_budget_message(family.key, budget, family.fallback, len(held_out.costs)))
    return details, budget


def build_processes():
    """The multiprocessing context for build children: a fork server that has imported torch and
    the exporters once (exporter/preload.py), instead of a spawn per child (~5 s of imports each).
    Not plain fork: the parent has run torch ops, and its thread pools and global torch state
    (quantized engine, Inductor patches) would be inherited; the fork server has run none."""
    import torch.multiprocessing

    context = torch.multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["qexport.exporter.preload"])  # no effect once the server runs
    return context


def build_in_child(family: Family, ctx: BuildContext, path: Path) -> BuildDetails:
    """Run ``family.build`` in a fresh child process, so no family can change another's result.

    Families change process-global torch state: eager int8 sets ``torch.backends.quantized.engine``,
    pt2e patches Inductor internals while compiling, and a pt2e int8 package compiled after an
    eager int8 ``convert`` in the same process ran 2-3x slower. Each child is forked from a fork
    server that has only imported torch (``build_processes``), so it starts from a clean torch; the
    data reaches it through shared memory (torch.multiprocessing), the model as one pickled buffer
    (``BuildContext.__getstate__``), the artifact through ``path``, and what was done (or the
    exception raised) comes back through a pipe. The child never sees Ctrl-C, which reaches the
    whole process group (``start_fork_server``): the parent alone handles it, stops the child and
    removes the half-written file.
    """
    processes = build_processes()
    receive, send = processes.Pipe(duplex=False)
    job = (family, ctx, path, current_label())
    child = processes.Process(target=_build_and_send, args=(job, send), daemon=True)
    try:
        start_fork_server()
        try:
            child.start()  # a Ctrl-C here: a child already forked dies with the fork server
        finally:
            send.close()
        while not receive.poll(0.2):
            stop_if_cancelled()
            if not child.is_alive() and not receive.poll(0):
                raise QExportError(f"the process building {family.key} died without a result (exit {child.exitcode}: "
                                   "killed, out of memory or a crash in native code); rerun with --only to see its output.")
        ok, value = receive.recv()
    except BaseException:
        if child.pid is not None:
            child.kill()
        raise
    finally:
        if child.pid is not None:
            child.join()
        receive.close()
    if not ok:
        raise value
    return value


def start_fork_server() -> None:
    """Start the fork server (if it is not running) with SIGINT blocked. It keeps the blocked
    mask and passes it to every child it forks, so Ctrl-C, which reaches the whole process
    group, never interrupts it or a child, not even while they import torch; the parent alone
    handles it and stops the child. Only the spawn is blocked, not the seconds the server then
    spends importing, so the parent's own Ctrl-C still arrives at once. The resource tracker is
    started first: starting it unblocks SIGINT again (CPython 3.11)."""
    import signal
    from multiprocessing import forkserver, resource_tracker

    resource_tracker.ensure_running()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        forkserver.ensure_running()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def die_with_parent() -> None:
    """Linux: be killed when the parent dies, even by SIGKILL, so that no orphaned build keeps
    burning the cores (best effort; elsewhere the daemon flag covers normal exits). A build
    child's parent is the fork server, which exits as soon as the build process is gone."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _build_and_send(job: tuple[Family, BuildContext, Path, str], send) -> None:
    """Child side of :func:`build_in_child`: build, then send (True, details) or (False, exception)."""
    import signal

    from qexport.progress import quiet_library_warnings

    quiet_library_warnings()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C (see build_in_child)
    die_with_parent()
    family, ctx, path, label = job
    try:
        with labelled(label):
            result = (True, build_explained(family, ctx, path))
    except BaseException as err:  # noqa: BLE001 -- every outcome goes back to the parent, which decides
        result = (False, err)
    try:
        send.send(result)
    except BrokenPipeError:  # the parent is gone (Ctrl-C): nobody to tell
        pass
    finally:
        send.close()


def fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def is_up_to_date(final: Path, checkpoint_sha256: str, options: dict) -> bool:
    manifest_file = manifest_path(final)
    if not final.is_file() or not manifest_file.is_file():
        return False
    try:
        manifest = read_manifest(manifest_file)
    except QExportError:
        return False
    return (manifest.model.checkpoint_sha256 == checkpoint_sha256
            and manifest.build.options == options
            and artifact_problem(manifest_file, manifest) is None)


@dataclass
class Measured:
    """What the build measured in the artifact's own runtime: its evaluation and its golden I/O."""

    evaluation: Evaluation
    golden_inputs: np.ndarray
    golden_outputs: np.ndarray


def runner_logits(family: Family, path: Path, details: BuildDetails, split: Split, data) -> tuple[object, torch.Tensor]:
    """The file loaded in its deployment runtime (no model code), and its logits on ``split``."""
    runner = runtimes.load_runner(family.runtime, path, hints=details.load_hints)
    return runner, predict(lambda x: torch.from_numpy(runner.predict(x.numpy())), split, data.mean, data.std, EVAL_BATCH)


def measure(family: Family, path: Path, ctx: BuildContext, reference: Reference, details: BuildDetails) -> Measured:
    """Load the file in its deployment runtime and measure it on the test split."""
    runner, logits = runner_logits(family, path, details, reference.split, ctx.data)
    if logits.shape != reference.logits.shape:
        raise QExportError(f"{family.key} produced logits of shape {tuple(logits.shape)}, expected "
                           f"{tuple(reference.logits.shape)}; the export is broken.")
    if not torch.isfinite(logits).all():
        raise QExportError(f"{family.key} produced non-finite logits (inf/NaN) on the test split; "
                           f"the model's activations overflow {family.precision} -- this artifact is unusable.")
    labels = reference.split.labels
    golden_inputs = normalize(ctx.data.test.images[:ctx.options.golden_samples], ctx.data.mean, ctx.data.std).numpy()
    evaluation = Evaluation(
        samples=len(labels), top1=top1(logits, labels), fp32_reference_top1=top1(reference.logits, labels),
        top1_agreement_with_fp32=float((logits.argmax(1) == reference.logits.argmax(1)).float().mean()),
        max_abs_logit_diff=float((logits - reference.logits).abs().max()))
    return Measured(evaluation, golden_inputs, runner.predict(golden_inputs))


def write_golden(path: Path, inputs: np.ndarray, outputs: np.ndarray) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, inputs=inputs.astype(np.float32), outputs=outputs.astype(np.float32))
    atomic_write_bytes(path, buffer.getvalue())


def runtime_section(family: Family, details: BuildDetails) -> RuntimeSection:
    """The manifest's runtime section, from the runtime's declaration (qexport.runtimes.RUNTIMES)."""
    if details.runtime is not None:  # built in another environment, which knows its own versions
        return details.runtime
    declared = runtimes.RUNTIMES[family.runtime]
    versions = library_versions()
    compiled = (CompiledWith(torch=versions["torch"], torchao=versions["torchao"], machine=platform.machine(),
                             cpu=cpu_info()["model"], isa=isa_summary()) if family.compiled else None)
    return RuntimeSection(name=declared.name, requires=declared.requires(versions) if declared.requires else {},
                          tested_with={package: versions.get(package) for package in declared.packages},
                          compiled_with=compiled, quantized_engine=details.quantized_engine)


def make_manifest(ctx: BuildContext, family: Family, final: Path, details: BuildDetails, evaluation: Evaluation,
                  options: dict, seconds: float, golden: Path, budget: AccuracyBudget | None = None) -> Manifest:
    data = ctx.data
    height, width = data.image_size
    return Manifest(
        artifact=ArtifactFile(**vars(file_record(final)),
                              companions=[file_record(final.with_suffix(suffix)) for suffix in family.companions]),
        family=family.key, format=family.format, precision=family.precision, method=family.method,
        config=details.config, notes=details.notes + ([family.cpu_note] if family.cpu_note else []),
        devices=list(family.devices), requirements=requirements(family, ctx),
        runtime=runtime_section(family, details),
        model=ModelInfo(name=ctx.model_name, num_classes=data.num_classes, checkpoint_sha256=ctx.checkpoint_sha256),
        data=parse(DataInfo, data.describe(), "the data description"), synthetic=data.synthetic,
        calibration=details.calibration, int8_coverage=details.int8_coverage, accuracy_budget=budget,
        input=InputSpec(shape=["batch", 3, height, width], mean=list(data.mean), std=list(data.std)),
        output=OutputSpec(shape=["batch", data.num_classes], classes=list(data.classes)),
        evaluation=evaluation,
        golden=Golden(file=golden.name, sha256=sha256_file(golden), samples=ctx.options.golden_samples,
                      atol=GOLDEN_ATOL[family.precision]),
        build=BuildRecord(seconds=round(seconds, 1), options=options, quantized_engine=details.quantized_engine,
                          fine_tune=details.fine_tune, created=utc_now(), libraries=library_versions(),
                          cpu=cpu_info()["model"], isa=isa_summary(), qexport_version=__version__,
                          git_commit=git_commit(Path(__file__).parent)))


def file_record(path: Path) -> FileRecord:
    return FileRecord(file=path.name, size_bytes=path.stat().st_size, sha256=sha256_file(path))


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def requirements(family: Family, ctx: BuildContext) -> Requirements:
    """What the artifact needs from the CPU it runs on, which verify and bench check before loading.

    Compiled code (AOTInductor) needs what ``--target-cpu`` allowed the compiler to emit. The
    other runtimes (oneDNN in TorchScript/IPEX, MLAS in ONNX Runtime) choose kernels when they
    run, from the CPU they run on: they need only what the family itself needs (IPEX bf16), and
    what they will use is the host's ISA class, recorded here for the build host.
    """
    cpu, target = host_cpu(), ctx.options.target
    needs = family.artifact_needs(target, cpu)
    code = (f"compiled for {target.name} (-march={target.march or 'native'})" if family.compiled
            else "kernels chosen at run time for the CPU it runs on")
    return Requirements(cpu=needs.to_dict() if needs else None, compiled=family.compiled, code=code,
                        kernels_on_build_host=cpu.isa_class())


def write_index(out_dir: Path, model_name: str, outcomes: list[Outcome]) -> Path:
    """index.json lists every valid manifest in the folder plus this run's failures."""
    entries = []
    for manifest_file in find_manifests(out_dir):
        try:
            entries.append(IndexEntry.of(manifest_file, read_manifest(manifest_file)))
        except QExportError:
            continue
    index = Index(model=model_name, created=utc_now(), artifacts=entries,
                  failed=[Failure(o.family, o.reason) for o in outcomes if o.status == "failed"])
    path = out_dir / "index.json"
    atomic_write_json(path, index.to_dict())
    return path
