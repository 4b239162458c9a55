"""The bench worker: one artifact, one process, pinned before any runtime is imported.

Run as ``python -m qexport.runtimes.worker SPEC.json RESULT.json``. The harness sets the thread
environment variables (OMP/MKL/...) in our environment; here we pin the CPU affinity first,
then import the runtime, so thread pools are sized for the cores we really have.
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from qexport.core.documents import parse, to_json
from qexport.runtimes.results import EVAL_BATCH, EvalResult, RoundBatch, RoundResult, WorkerSpec

if TYPE_CHECKING:
    from qexport.runtimes.loadgen import Expectations


def pin(cores: list[int] | None) -> list[int]:
    if cores and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cores))
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's own high-water mark (VmHWM). Not ru_maxrss: Linux carries that over from
    the parent across fork+exec, so every worker reported the harness's 1166 MB peak."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def os_threads() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return -1


def time_calls(call, native, min_count: int, min_seconds: float, max_count: int = 100000) -> list[float]:
    """Per-call latencies (ms) with perf_counter_ns: at least min_count calls and min_seconds."""
    latencies: list[float] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(min_seconds * 1e9)
    while len(latencies) < max_count and (len(latencies) < min_count or clock() < deadline):
        start = clock()
        call(native)
        latencies.append((clock() - start) / 1e6)
    return latencies


def timer_cost_ns(iterations: int = 200_000) -> float:
    """What the timed loop adds per call besides the call itself: the loop with a no-op."""
    started = time.perf_counter_ns()
    time_calls(lambda _: None, None, iterations, 0, max_count=iterations)
    return (time.perf_counter_ns() - started) / iterations


def harness_overhead_pct(call, native, per_call_ms: float, rounds: int = 8, block_seconds: float = 0.05) -> float:
    """Extra time the timed loop (a perf_counter_ns pair and an append per call) costs over a bare
    loop of the same calls, in percent. Blocks of each kind are interleaved so that machine
    drift hits both alike; on a noisy VM single blocks still scatter, so read it as an estimate."""
    clock = time.perf_counter_ns
    per_block = max(1, int(block_seconds * 1e3 / max(per_call_ms, 1e-3)))
    bare = timed = 0
    for _ in range(rounds):
        start = clock()
        for _ in range(per_block):
            call(native)
        bare += clock() - start
        start = clock()
        time_calls(call, native, per_block, 0)
        timed += clock() - start
    return (timed - bare) / bare * 100


def warm_up(call, native, fixed: int, window: int = 10, max_calls: int = 300) -> dict:
    """A fixed number of calls, then windows until the median stops moving (or max_calls)."""
    from qexport.runtimes.stats import is_stable

    for _ in range(fixed):
        call(native)
    previous = time_calls(call, native, window, 0)
    calls = fixed + window
    while calls < max_calls:
        current = time_calls(call, native, window, 0)
        calls += window
        if is_stable(current, previous):
            return {"fixed": fixed, "total_calls": calls, "stable": True}
        previous = current
    return {"fixed": fixed, "total_calls": calls, "stable": False}


def run(spec: WorkerSpec) -> RoundResult:
    cores = pin(spec.cores)
    import numpy as np

    from qexport import runtimes
    from qexport.runtimes.stats import summarize

    rss_before = rss_mb()
    started = time.perf_counter()
    runner = runtimes.load_runner(spec.runtime, Path(spec.artifact), device=spec.device, threads=spec.threads,
                                  hints=spec.hints, settings=spec.settings)
    load_ms = (time.perf_counter() - started) * 1e3
    rss_after_load = rss_mb()
    rng = np.random.default_rng(0)
    batches: dict[str, RoundBatch] = {}
    first_inference_ms = None
    for batch_size in spec.batch_sizes:
        data = rng.standard_normal((batch_size, *spec.input_shape)).astype(np.float32)
        native = runner.prepare(data)
        if first_inference_ms is None:  # the very first inference: what a cold start costs
            started = time.perf_counter()
            runner.run_native(native)
            first_inference_ms = (time.perf_counter() - started) * 1e3
        warm = warm_up(runner.run_native, native, spec.warmup)
        latencies = time_calls(runner.run_native, native, spec.min_count, spec.min_seconds)
        stats = summarize(latencies, batch_size)
        overhead = harness_overhead_pct(runner.run_native, native, stats.p50_ms) if spec.overhead else None
        batches[str(batch_size)] = RoundBatch(**dataclasses.asdict(stats), warmup=warm, harness_overhead_pct=overhead,
                                              latencies_ms=latencies)
    result = RoundResult(
        pinned_cores=cores, load_ms=load_ms, rss_after_load_mb=rss_after_load,
        rss_growth_from_load_mb=rss_after_load - rss_before, first_inference_ms=first_inference_ms, batches=batches,
        timer_cost_ns=timer_cost_ns() if spec.overhead else None,
        eval=evaluate(runner, spec, np) if spec.eval_inputs else None, runtime=runner.describe(),
        os_threads=os_threads(), env_threads={k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        peak_rss_mb=0.0)
    if spec.golden:
        check_golden(runner, spec, result, np)
    if spec.scenarios:
        under_load(runner, spec, result, np)
    result.peak_rss_mb = peak_rss_mb()
    return result


def check_golden(runner, spec: WorkerSpec, result: RoundResult, np) -> None:
    """The golden inputs' outputs under this worker's settings, against the golden outputs: a
    setting that changes results beyond the tolerance is caught here, where it runs."""
    from qexport.core.artifact_files import golden_gap

    with np.load(spec.golden) as golden:
        result.golden_ok, result.golden_max_diff = golden_gap(runner.predict(golden["inputs"]), golden["outputs"],
                                                              spec.golden_atol)


def expectations(batches: dict[str, RoundBatch]) -> "Expectations":
    """What LoadGen should expect, from the tight loop's p50s: one sample alone (the smallest batch,
    per sample), the best per-sample time of any batch, and the best throughput."""
    from qexport.runtimes.loadgen import Expectations

    smallest = min(batches, key=int)
    return Expectations(single_ms=batches[smallest].p50_ms / int(smallest),
                        per_sample_ms=min(stats.p50_ms / int(batch) for batch, stats in batches.items()),
                        offline_qps=max(stats.throughput_ips for stats in batches.values()))


def under_load(runner, spec: WorkerSpec, result: RoundResult, np) -> None:
    """The MLPerf LoadGen scenarios, with expectations from the tight loop just measured; the QSL
    is the evaluation set (random inputs when accuracy is not measured)."""
    from qexport.runtimes import loadgen

    expect = expectations(result.batches)
    if spec.eval_inputs:
        inputs = np.ascontiguousarray(normalised(np.load(spec.eval_inputs, mmap_mode="r"), spec))
    else:
        inputs = np.random.default_rng(0).standard_normal((256, *spec.input_shape)).astype(np.float32)
    folder = Path(spec.scenario_dir)
    pinned = result.pinned_cores
    pin(sorted(set(spec.scenarios.cores) | set(pinned)))  # LoadGen's threads and server/offline instances

    def load_runner(threads: int):
        from qexport import runtimes

        return runtimes.load_runner(spec.runtime, Path(spec.artifact), device=spec.device, threads=threads,
                                    hints=spec.hints, settings=spec.settings)

    result.scenarios, result.instancing = loadgen.run_scenarios(runner, load_runner, inputs, spec.scenarios, expect,
                                                                folder, pinned)
    if spec.scenarios.accuracy and spec.eval_labels:
        result.loadgen_accuracy = loadgen.accuracy_run(runner, inputs, np.load(spec.eval_labels), folder / "accuracy")


def normalised(pixels, spec: WorkerSpec):
    """uint8 pixels as the model's float32 input, by the manifest's mean and std."""
    from qexport.core.preprocessing import normalise

    return normalise(pixels, spec.eval_mean, spec.eval_std)


def evaluate(runner, spec: WorkerSpec, np) -> EvalResult:
    """Top-1 on the evaluation set, read from its memory-mapped pixels a batch at a time."""
    pixels = np.load(spec.eval_inputs, mmap_mode="r")
    labels = np.load(spec.eval_labels)
    from qexport.core.preprocessing import batch_for

    batch = batch_for(int(pixels.shape[-1]), EVAL_BATCH)
    outputs = [runner.predict(normalised(np.asarray(pixels[i:i + batch]), spec)) for i in range(0, len(pixels), batch)]
    logits = np.concatenate(outputs)
    np.save(spec.logits_out, logits)
    return EvalResult(samples=int(len(labels)), top1=float((logits.argmax(1) == labels).mean()))


def main(argv: list[str]) -> int:
    spec_path, result_path = Path(argv[0]), Path(argv[1])
    try:
        spec = parse(WorkerSpec, json.loads(spec_path.read_text()), "the worker's spec")
        result = {"status": "ok", **to_json(run(spec))}
    except Exception as err:  # reported to the harness as this row's reason, never a crash of the run
        from qexport.core.errors import RuntimeMissing, user_message

        reason = user_message(err)
        result = {"status": "skipped" if isinstance(err, RuntimeMissing) else "failed", "reason": reason}
    result_path.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
