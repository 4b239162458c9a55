"""``qexport bench``: measure every artifact of a folder, each in its own pinned worker process.

The harness never imports a runtime itself: it validates manifests, checks hashes, prepares the
evaluation set as .npy files, and starts one worker per artifact with the thread environment
already set, so nothing one runtime does (thread pools, allocator state, JIT caches) can bleed
into another's numbers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qexport.core.envinfo import command_line
from qexport.core.interrupts import ctrl_c_held_back
from qexport.core.artifact_files import artifact_file, artifact_paths, artifact_problem
from qexport.core.cpu_needs import host_problem_for
from qexport.core.index import discover
from qexport.core.manifest import DataInfo, Manifest, Precision
from qexport.core.errors import QExportError, RuntimeMissing, last_line
from qexport.core.documents import parse, to_json
from qexport.runtimes import gpu_problem
from qexport.runtimes.evaluation_set import EvalSet, require_matching_data
from qexport.runtimes.figures import (add_agreement, add_best_fp32_ratios, add_ratios, combine_rounds, merge_parts,
                                      noise_summary, ties)
from qexport.runtimes.settings import Applied, environment_for, recorded_settings
from qexport.runtimes.results import (BASELINE, BenchDocument, BenchRow, RoundResult, RowStatus, WorkerSpec,
                                      parse_round)
from qexport.runtimes.bench_options import BenchOptions, RunOptions
from qexport.runtimes.environment import current_environment
from qexport.core.selection import match_keys

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS")


def check_row(manifest_file: Path, manifest: Manifest, options: BenchOptions) -> BenchRow:
    """Build the row and decide, before starting a worker, whether it can be measured at all."""
    row = BenchRow(family=manifest.family, file=manifest.artifact.file, format=manifest.format,
              precision=manifest.precision, runtime=manifest.runtime.name,
              size_bytes=manifest.artifact.total_size_bytes, sha256=manifest.artifact.sha256,
              build_top1=manifest.evaluation.top1,
              float_layers=manifest.float_layers, int8_share=manifest.int8_weight_share)
    paths = artifact_paths(manifest_file, manifest)
    missing = next((path for path in paths if not path.is_file()), None)
    if missing:
        row.status, row.reason = RowStatus.FAILED, f"{missing.name} is missing; rebuild with `qexport build`."
        return row
    row.size_bytes = sum(path.stat().st_size for path in paths)
    modified = artifact_problem(manifest_file, manifest)
    if modified:
        if not options.allow_modified:
            row.status, row.reason = RowStatus.REFUSED, f"{modified}; rebuild it, or pass --allow-modified to measure it anyway."
            return row
        row.notes.append(f"MODIFIED: {modified} (--allow-modified)")
    row.notes.extend(note for note in (fixed_batch_note(manifest, options), delegation_note(manifest)) if note)
    cpu_problem = host_problem_for(manifest) if options.device == "cpu" else None
    needs_gpu = gpu_problem(row.runtime)  # a GPU runtime on a host without the GPU, CUDA or package it needs
    if cpu_problem:  # checked before any worker loads it: a SIGILL is never the message
        row.status, row.reason = RowStatus.REFUSED, cpu_problem
    elif needs_gpu:
        row.status, row.reason = RowStatus.SKIPPED, needs_gpu
    elif options.device not in manifest.devices:
        row.status, row.reason = RowStatus.SKIPPED, f"{row.family} does not run on {options.device}."
    elif options.device == "cpu" and manifest.precision is Precision.FP16 and not options.cpu_fp16:
        row.status, row.reason = RowStatus.SKIPPED, ("fp16 is a GPU format (use --device cuda); on CPU it runs through slow "
                                             "fallback kernels -- pass --cpu-fp16 to measure it anyway")
    elif options.device == "cpu" and manifest.precision is Precision.FP16:
        row.notes.append("fp16 on CPU: a GPU format; the CPU runs it through slow fallback kernels")
    elif options.device == "cuda" and not cuda_available():
        row.status, row.reason = RowStatus.SKIPPED, "no CUDA GPU on this machine."
    else:
        try:
            worker_python(row.runtime)  # a runtime with its own environment: is it installed?
        except RuntimeMissing as err:
            row.status, row.reason = RowStatus.SKIPPED, str(err)
    return row


def cuda_available() -> bool:
    from qexport.core.envinfo import gpu_info

    return bool(gpu_info())


def worker_env(options: BenchOptions, extra: dict[str, str] | None = None) -> dict:
    """The worker's environment: ours, its thread count, and the runtime settings applied through
    environment variables (``extra``), all set before the worker imports any runtime."""
    from qexport.runtimes.foreign import child_env

    return {**child_env(), **{name: str(options.threads) for name in THREAD_VARIABLES}, **(extra or {})}


def worker_python(runtime: str) -> str:
    """This interpreter, or the one of the runtime's own environment (IPEX)."""
    from qexport.runtimes.foreign import python_for

    return python_for(runtime) or sys.executable


@dataclass(frozen=True)
class WorkerFailure:
    status: str  # failed | skipped
    reason: str


def run_worker(spec: WorkerSpec, options: BenchOptions, python: str = sys.executable,
               env: dict[str, str] | None = None) -> RoundResult | WorkerFailure:
    """Start the worker in its own process group; kill the whole group on timeout or Ctrl-C.
    ``env``: environment variables its runtime settings need (runtimes.settings.environment_for)."""
    with tempfile.TemporaryDirectory(prefix="qexport-worker-") as tmp:
        spec_file, result_file = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_file.write_text(json.dumps(to_json(spec)))
        started: list[subprocess.Popen] = []
        try:
            # The worker runs in its own process session (setsid), so the terminal's Ctrl-C never reaches it: the
            # harness must kill it, and a Ctrl-C inside Popen would leave nobody who knows its pid.
            with ctrl_c_held_back():  # a Ctrl-C now lands once ``started`` holds the worker
                started.append(subprocess.Popen(
                    [python, "-m", "qexport.runtimes.worker", str(spec_file), str(result_file)],
                    env=worker_env(options, env), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    text=True, start_new_session=True))
            process = started[0]
            _, stderr = process.communicate(timeout=options.timeout)
        except subprocess.TimeoutExpired:
            kill_group(started[0])
            return WorkerFailure("failed", f"timed out after {options.timeout:.0f} s (--timeout)")
        except BaseException:
            for worker in started:
                kill_group(worker)
            raise
        if not result_file.is_file():
            tail = last_line(stderr or "", 160)
            return WorkerFailure("failed", f"worker crashed (exit {describe_exit(process.returncode)}) {tail}".strip())
        return read_worker_result(result_file)


def read_worker_result(path: Path) -> RoundResult | WorkerFailure:
    """The worker's round, or why it has none (a worker that failed writes status and reason)."""
    try:
        data = json.loads(path.read_text())
        status = data.pop("status", None)
        if status != "ok":
            return WorkerFailure(str(status or "failed"), str(data.get("reason", "unknown failure")))
        return parse_round(data, "the worker's result")
    except (ValueError, QExportError) as err:
        return WorkerFailure("failed", f"the worker wrote an unreadable result ({err})")


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return str(code)


def bench_directory(directory: Path, options: BenchOptions, data=None, seed: int = 0,
                    progress=None, entries: list[tuple[Path, Manifest]] | None = None) -> BenchDocument:
    """Measure every artifact in ``directory``; returns the bench.json document. ``entries``: what
    :func:`discover` found there, when the caller already asked (so its notices print once)."""
    entries = match_entries(discover(directory) if entries is None else entries, options)
    cores = options.pinned_cores()
    rows = [check_row(manifest_file, manifest, options) for manifest_file, manifest in entries]
    applied = [settings_for_row(manifest, row, options) for (_, manifest), row in zip(entries, rows)]
    rounds: dict[str, list[RoundResult]] = {row.family: [] for row in rows}
    logits: dict[str, np.ndarray] = {}
    started = time.time()
    if data is not None:
        require_matching_data(entries, data)
    with tempfile.TemporaryDirectory(prefix="qexport-bench-") as tmp:
        eval_set = EvalSet(data, options.eval_samples, seed, Path(tmp)) if data is not None else None
        # Interleaved rounds (A B C … A B C …): slow drift of the host hits every artifact alike.
        for round_index in range(options.rounds):
            for number, ((manifest_file, manifest), row) in enumerate(zip(entries, rows)):
                if progress and (row.status is RowStatus.OK or round_index == 0):
                    progress(number, len(entries), row, round_index, options.rounds)
                if row.status is not RowStatus.OK:
                    continue
                first = round_index == 0
                logits_out = Path(tmp) / f"logits{number}.npy"
                outcome = run_round(manifest_file, manifest, options, cores, applied[number],
                                    eval_set if first else None, logits_out, first)
                if isinstance(outcome, WorkerFailure):
                    row.status, row.reason = RowStatus(outcome.status), outcome.reason
                    continue
                rounds[row.family].append(outcome)
                if first and eval_set is not None and logits_out.is_file():
                    logits[row.family] = np.load(logits_out)
        for row in rows:
            if row.status is RowStatus.OK:
                row.result = combine_rounds(rounds[row.family])
        add_agreement(rows, logits)
    return make_document(rows, options, cores, data, started, directory)


def settings_for_row(manifest: Manifest, row: BenchRow, options: BenchOptions) -> Applied:
    """The runtime settings tuning recorded for this host's CPU class, per batch size; the row
    records them and says so (on a GPU, or on another CPU class, the defaults)."""
    from qexport.core.hardware import host_cpu

    batches = served_batch_sizes(manifest, options)
    if options.device != "cpu":
        return Applied({batch: {} for batch in batches})
    applied = recorded_settings(manifest, host_cpu(), batches)
    row.settings = {str(batch): chosen for batch, chosen in applied.by_batch.items() if chosen}
    if applied.note:
        row.notes.append(applied.note)
    return applied


def run_round(manifest_file: Path, manifest: Manifest, options: BenchOptions, cores: list[int], applied: Applied,
              eval_set: EvalSet | None, logits_out: Path, first: bool) -> RoundResult | WorkerFailure:
    """One round of one artifact: one worker per group of batch sizes that share settings (the
    first group's worker also scores accuracy and runs LoadGen), merged into one round."""
    parts = []
    for index, (chosen, batches) in enumerate(applied.groups()):
        spec = worker_spec(manifest_file, manifest, options, cores, eval_set if index == 0 else None, logits_out,
                           first_round=first and index == 0, batch_sizes=batches, settings=chosen)
        outcome = run_worker(spec, options, python=worker_python(manifest.runtime.name),
                             env=environment_for(manifest.runtime.name, chosen))
        if isinstance(outcome, WorkerFailure):
            return outcome
        parts.append(outcome)
    return merge_parts(parts)


def run_settings_worker(manifest_file: Path, manifest: Manifest, chosen: dict[str, str], options: BenchOptions,
                        cores: list[int], batch_sizes: list[int], golden: bool) -> RoundResult | WorkerFailure:
    """A fresh pinned worker under ``chosen`` runtime settings (an environment setting holds only
    from a process's start): it times ``batch_sizes`` (none: load only) and, with ``golden``, checks
    the golden outputs under them. No accuracy, harness-overhead check or LoadGen."""
    from qexport.core.artifact_files import golden_path

    spec = worker_spec(manifest_file, manifest, options, cores, None, Path(os.devnull), first_round=False,
                       batch_sizes=batch_sizes, settings=chosen)
    if golden:
        spec.golden, spec.golden_atol = str(golden_path(artifact_file(manifest_file, manifest))), manifest.golden.atol
    return run_worker(spec, options, python=worker_python(manifest.runtime.name),
                      env=environment_for(manifest.runtime.name, chosen))


def golden_in_worker(manifest_file: Path, manifest: Manifest, chosen: dict[str, str]) -> RoundResult | WorkerFailure:
    """The golden check alone under ``chosen`` runtime settings, in a fresh pinned worker (verify)."""
    options = BenchOptions(batch_sizes=(1,), rounds=1)
    return run_settings_worker(manifest_file, manifest, chosen, options, options.pinned_cores(), [], golden=True)


def match_entries(entries: list[tuple[Path, Manifest]], options: BenchOptions) -> list[tuple[Path, Manifest]]:
    """The artifacts --only names (all of them without it); an unknown name is one sentence."""
    if not options.only:
        return entries
    chosen = set(match_keys(options.only, dict.fromkeys(m.family for _, m in entries), "family in this folder"))
    return [(p, m) for p, m in entries if m.family in chosen]


def served_batch_sizes(manifest: Manifest, options: BenchOptions) -> list[int]:
    """The asked batch sizes one call of this artifact takes; a fixed-shape program (ExecuTorch)
    that takes none of them is timed at its own batch instead."""
    served = [b for b in options.batch_sizes if manifest.input.serves(b)]
    return served or [manifest.input.fixed_batch]


def fixed_batch_note(manifest: Manifest, options: BenchOptions) -> str | None:
    """What a row says when its program's fixed batch left asked batch sizes unmeasured."""
    skipped = [b for b in options.batch_sizes if not manifest.input.serves(b)]
    if not skipped:
        return None
    return (f"fixed batch {manifest.input.fixed_batch}: batch {', '.join(map(str, skipped))} not timed "
            "(the program takes one input shape; larger batches run as repeated calls in accuracy and LoadGen)")


def delegation_note(manifest: Manifest) -> str | None:
    """A program that leaves operators to slow portable kernels is flagged, naming them."""
    delegation = manifest.delegation
    if delegation is None or not delegation.portable_ops:
        return None
    return (f"{delegation.mac_share:.0%} of multiply-adds and {delegation.op_share:.0%} of operators in "
            f"{delegation.backend}; on portable kernels: {', '.join(delegation.portable_op_names)}")


def worker_spec(manifest_file: Path, manifest: Manifest, options: BenchOptions, cores: list[int],
                eval_set: EvalSet | None, logits_out: Path, first_round: bool = True,
                batch_sizes: list[int] | None = None, settings: dict[str, str] | None = None) -> WorkerSpec:
    """What one worker measures; accuracy and the harness-overhead check only in the first round."""
    files = eval_set.files_for(manifest) if eval_set is not None else None
    return WorkerSpec(
        artifact=str(artifact_file(manifest_file, manifest)), runtime=manifest.runtime.name, hints=manifest.load_hints,
        device=options.device, threads=options.threads, cores=cores, settings=dict(settings or {}),
        batch_sizes=batch_sizes if batch_sizes is not None else served_batch_sizes(manifest, options),
        warmup=options.warmup, min_count=options.min_count, min_seconds=options.min_seconds,
        input_shape=manifest.input.shape[1:], overhead=first_round,
        eval_inputs=files[0] if files else None, eval_labels=files[1] if files else None,
        eval_mean=list(manifest.input.contract.mean), eval_std=list(manifest.input.contract.std),
        logits_out=str(logits_out) if files else None,
        scenarios=options.scenarios if first_round else None,
        scenario_dir=str(Path(options.loadgen_dir) / manifest.family) if options.scenarios and first_round else None)


def make_document(rows: list[BenchRow], options: BenchOptions, cores: list[int], data, started: float,
                  directory: Path) -> BenchDocument:
    add_ratios(rows)
    best_fp32 = add_best_fp32_ratios(rows, [str(b) for b in options.batch_sizes])
    return BenchDocument(
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        duration_s=round(time.time() - started, 1),
        command=command_line(),
        directory=str(directory),
        options=parse(RunOptions, {**to_json(options), "pinned_cores": cores}, "the bench options"),
        environment=current_environment(),
        data=parse(DataInfo, data.describe(), "the evaluation data") if data is not None else None,
        baseline=BASELINE, rows=rows,
        noise=noise_summary(rows, str(options.batch_sizes[0])),
        ties=[tie for b in options.batch_sizes for tie in ties(rows, str(b))], best_fp32=best_fp32)
