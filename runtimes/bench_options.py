"""How bench measures: its options (each field with its one default, flag and help), the LoadGen
scenario settings, and the options a finished run recorded."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from qexport.core.errors import QExportError
from qexport.core.options import option


# MLPerf's server bound for ResNet50 is 15 ms. ResNet18 at 32 px is lighter, but a deployment's
# latency budget, not the model, sets the bound: the same 15 ms keeps the numbers comparable with MLPerf's.
DEFAULT_TARGET_LATENCY_MS = 15.0


@dataclass
class ScenarioSettings:
    """How the scenarios run (recorded in bench.json)."""

    scenarios: list[str]
    min_duration_s: float = option(
        5.0, "--scenario-seconds",
        "Minimum duration of each LoadGen run (the server search makes --server-steps runs).")
    target_latency_ms: float = option(
        DEFAULT_TARGET_LATENCY_MS, "--target-latency-ms",
        "Server scenario: the p99 bound a QPS must meet to be VALID (MLPerf's ResNet50 bound).")
    server_steps: int = option(4, "--server-steps", "Server scenario: LoadGen runs in the bisection for the peak VALID QPS.")
    official: bool = option(False, "--mlperf-durations",
                            "MLPerf's official minimums (600 s per run) instead of --scenario-seconds.")
    accuracy: bool = True          # also an AccuracyOnly run, decoded from mlperf_log_accuracy.json
    cores: list[int] = field(default_factory=list)  # where server and offline serve (empty: the tight loop's cores)
    instancing: str = option(
        "auto", "--instancing",
        "Server/offline on several cores (--cores, default all usable): per-core (one single-threaded instance per "
        "core), threads (one instance, a thread per core) or auto (offline both ways, keep the one that serves more; "
        "both recorded).")


@dataclass(frozen=True)
class BenchOptions:
    """How to measure; every field is printed with the results."""

    threads: int = option(1, "--threads", "Threads per worker (intra-op, inter-op, OMP/MKL).")
    cores: tuple[int, ...] | None = option(
        None, "--cores", "Comma-separated CPU cores to pin workers to (default: the last N usable).")
    batch_sizes: tuple[int, ...] = option((1, 32, 128), "--batch-sizes", "Comma-separated batch sizes.")
    rounds: int = option(
        5, "--rounds", "Rounds per artifact, each in a fresh worker process, interleaved across artifacts "
        "(A B C … A B C …); every latency and ratio gets a 95 % interval over them. --rounds 1 is a quick single "
        "pass with no interval.")
    warmup: int = option(5, "--warmup", "Fixed warm-up calls per round before the until-stable windows.")
    min_count: int = option(10, "--min-count", "Minimum timed calls per round and batch size.")
    min_seconds: float = option(
        0.5, "--min-seconds", "Minimum timed seconds per round and batch size (longer rounds narrow the intervals).")
    eval_samples: int | None = option(
        None, "--eval-samples", "Accuracy on a seeded subset of the test split (default: all).")
    device: str = option("cpu", "--device", "cpu or cuda.")
    timeout: float = option(900.0, "--timeout", "Seconds before a worker is killed and reported as failed.")
    allow_modified: bool = option(
        False, "--allow-modified", "Measure artifacts whose sha256 differs from their manifest.")
    only: tuple[str, ...] | None = option(None, "--only", "Comma-separated families or prefixes to measure.")
    cpu_fp16: bool = option(  # fp16 is a GPU format: on CPU it is measured only when asked
        False, "--cpu-fp16",
        "Also measure fp16 (GPU) artifacts on the CPU, where they are slow (minutes per artifact).")
    scenarios: ScenarioSettings | None = None  # MLPerf LoadGen scenarios (first round), logs under loadgen_dir
    loadgen_dir: str | None = None

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise QExportError(f"--threads must be at least 1, got {self.threads}.")
        if self.rounds < 1:
            raise QExportError(f"--rounds must be at least 1, got {self.rounds}.")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise QExportError("--batch-sizes must be positive integers, e.g. 1,32,128.")
        if self.device not in ("cpu", "cuda"):
            raise QExportError(f"--device must be cpu or cuda, got {self.device!r}.")
        usable = usable_cores()
        if self.cores and not set(self.cores) <= set(usable):
            raise QExportError(f"--cores {','.join(map(str, self.cores))} is not within the usable cores {usable}.")
        if self.threads > len(usable):
            raise QExportError(f"--threads {self.threads} exceeds the {len(usable)} usable cores.")
        if self.scenarios and not self.loadgen_dir:
            raise QExportError("LoadGen scenarios need a folder for their logs (loadgen_dir).")

    def pinned_cores(self) -> list[int]:
        """Explicit --cores, else the last N usable cores (core 0 tends to take interrupts)."""
        return list(self.cores) if self.cores else usable_cores()[-self.threads:]


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


@dataclass(frozen=True)
class RunOptions(BenchOptions):
    """The options a run measured with, as bench.json records them, plus the cores it pinned.
    A record from another host is read as it is: it is not checked against this host's cores."""

    rounds: int = 1  # version-1 documents: a single pass
    pinned_cores: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        pass
