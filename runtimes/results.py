"""The bench document (bench.json) and the one result a worker hands back, as types.

``qexport bench`` writes a :class:`BenchDocument`; the reports, ``compare`` and ``pack`` read it
back through :func:`load_bench` only, so a malformed or truncated file is one sentence wherever it
is read. Workers write a :class:`RoundResult` (one fresh process, one round) that the harness
parses the same way before combining rounds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qexport.documents import TextEnum, parse, renamed, to_json
from qexport.errors import QExportError
from qexport.manifest import DataInfo, LoadHints
from qexport.options import option
from qexport.runtimes.stats import Interval

BENCH_SCHEMA = "qexport.bench"
BENCH_SCHEMA_VERSION = 3  # 3: agreement_with_fp32 named agreement_with_baseline_artifact; 2: rounds, intervals
READABLE_BENCH_VERSIONS = (1, 2, 3)  # 1: single pass, no rounds (read as one round)

# The family every speed-up, size ratio and bench agreement is measured against: the one definition
# the exporter registers it under and the reports look it up by.
BASELINE = "torchscript-fp32"
# Images per forward pass wherever accuracy is scored (a build's evaluation, a bench worker's):
# large enough to amortise per-call cost, small enough for any artifact's memory.
EVAL_BATCH = 250


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


@dataclass
class InstancingChoice:
    """How server and offline used several cores, and -- when chosen automatically -- the offline
    throughput of each layout that decided it."""

    mode: str                      # per-core: one single-threaded instance per core | threads: one instance, N threads
    instances: int
    threads_each: int
    cores: list[int]
    chosen_by: str = "asked"       # asked | auto
    offline_samples_per_s: dict[str, float] = field(default_factory=dict)

    def label(self) -> str:
        cores = ",".join(map(str, self.cores))
        tried = ", ".join(f"{mode} {sps:.0f}/s" for mode, sps in self.offline_samples_per_s.items())
        how = f" (auto: offline {tried})" if self.chosen_by == "auto" and tried else ""
        return f"{self.mode}: {self.instances} x {self.threads_each} thread(s) on cores {cores}{how}"


@dataclass
class ServerPoint:
    offered_qps: float
    p99_ms: float | None
    valid: bool


@dataclass
class ScenarioResult:
    scenario: str
    valid: bool
    reason: str = ""               # LoadGen's reason for INVALID, and what to change
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    qps: float | None = None       # queries/s (single/multi-stream, server) or samples/s (offline)
    queries: int | None = None
    target_qps: float | None = None
    log_dir: str = ""
    curve: list[ServerPoint] = field(default_factory=list)  # server: every offered QPS tried


@dataclass
class LoadGenAccuracy:
    samples: int
    top1: float
    log_dir: str


@dataclass
class WorkerSpec:
    """What one worker process measures (written by the harness, read by ``runtimes.worker``)."""

    artifact: str
    runtime: str
    batch_sizes: list[int]
    input_shape: list[int | str]
    warmup: int
    min_count: int
    min_seconds: float
    hints: LoadHints = field(default_factory=LoadHints)
    device: str = "cpu"
    threads: int | None = None
    cores: list[int] | None = None
    overhead: bool = True          # measure the harness's own cost (first round only)
    eval_inputs: str | None = None  # .npy files of the evaluation set (uint8 pixels), and where its logits go
    eval_labels: str | None = None
    eval_mean: list[float] = field(default_factory=list)  # the manifest's normalisation of those pixels
    eval_std: list[float] = field(default_factory=list)
    logits_out: str | None = None
    scenarios: ScenarioSettings | None = None  # LoadGen scenarios to run after the tight loop (first round)
    scenario_dir: str | None = None            # where LoadGen's logs for this artifact go


@dataclass
class EvalResult:
    """Top-1 on the test split in the artifact's runtime, and its agreement with the baseline
    *artifact* (:data:`BASELINE` in its runtime) -- not with the eager model, as a manifest's is."""

    samples: int
    top1: float
    agreement_with_baseline_artifact: float | None = renamed("agreement_with_fp32", default=None)
    max_abs_logit_diff: float | None = None


@dataclass
class LatencySummary:
    """Per-call latencies of one batch size (see stats.summarize)."""

    count: int
    min_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    max_ms: float
    throughput_ips: float


@dataclass
class RoundBatch(LatencySummary):
    """One batch size in one round: its summary, its warm-up and every call's latency."""

    warmup: dict = field(default_factory=dict)
    harness_overhead_pct: float | None = None
    latencies_ms: list[float] = field(default_factory=list)


@dataclass
class BatchResult(LatencySummary):
    """One batch size over every round: pooled summary, p50 as the geometric mean of the rounds'
    medians with its 95 % interval (``p50_ms`` and ``throughput_ips`` follow that p50)."""

    pooled_p50_ms: float | None = None
    p50_interval_ms: Interval | None = None      # 95 % confidence interval of the geometric mean over rounds
    p50_prediction_ms: Interval | None = None    # 95 % prediction interval: where one fresh process will land
    round_p50_ms: list[float] = field(default_factory=list)
    round_spread_pct: float = 0.0
    warmup: Any = None
    harness_overhead_pct: float | None = None

    def round_medians(self) -> list[float]:
        """The rounds' p50s (a version-1 document has one round: its p50)."""
        return self.round_p50_ms or [self.p50_ms]


@dataclass
class RunFacts:
    """What one worker process saw besides latency: load cost, memory, threads, runtime, accuracy."""

    load_ms: float
    peak_rss_mb: float
    pinned_cores: list[int] = field(default_factory=list)
    rss_after_load_mb: float | None = None
    rss_growth_from_load_mb: float | None = None
    first_inference_ms: float | None = None
    timer_cost_ns: float | None = None
    eval: EvalResult | None = None
    runtime: dict = field(default_factory=dict)   # the runner's own description (name, version, threads)
    os_threads: int | None = None
    env_threads: dict[str, str | None] = field(default_factory=dict)
    scenarios: list[ScenarioResult] = field(default_factory=list)  # MLPerf LoadGen, first round only
    loadgen_accuracy: LoadGenAccuracy | None = None
    instancing: InstancingChoice | None = None  # how server/offline used the cores

    def scenario(self, name: str) -> "ScenarioResult | None":
        return next((s for s in self.scenarios if s.scenario == name), None)


@dataclass
class RoundResult(RunFacts):
    """What a worker writes: one round of one artifact."""

    batches: dict[str, RoundBatch] = field(default_factory=dict)


@dataclass
class ArtifactResult(RunFacts):
    """An artifact's rounds combined (load, memory and accuracy from the first round)."""

    batches: dict[str, BatchResult] = field(default_factory=dict)
    rounds: int = 1


class RowStatus(TextEnum):
    OK = "ok"              # measured
    FAILED = "failed"      # the artifact or its worker failed: the sentence says why
    SKIPPED = "skipped"    # not meant to run here (fp16 on a CPU, a runtime not installed)
    REFUSED = "refused"    # not measured on purpose (modified file, a CPU it cannot run on)


@dataclass
class BenchRow:
    family: str
    file: str
    format: str
    precision: str
    runtime: str
    status: RowStatus = RowStatus.OK
    reason: str = ""
    size_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    build_top1: float | None = None
    float_layers: int = 0              # layers the accuracy budget kept in float (from the manifest)
    int8_share: float | None = None    # share of weights int8 (Manifest.int8_weight_share)
    result: ArtifactResult | None = None
    size_ratio_vs_fp32: float | None = None
    speedup_vs_fp32: dict[str, float] = field(default_factory=dict)
    speedup_interval: dict[str, Interval] = field(default_factory=dict)
    # Against the fastest fp32 artifact of the same run at each batch size (BenchDocument.best_fp32):
    # the honest headline, with its confidence interval and where one re-measurement will land.
    speedup_vs_best_fp32: dict[str, Interval] = field(default_factory=dict)
    speedup_vs_best_fp32_prediction: dict[str, Interval] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = RowStatus(self.status)  # a status given as its text is checked and typed here

    @property
    def measured(self) -> bool:
        return self.status is RowStatus.OK and self.result is not None

    def batch(self, batch: str) -> BatchResult | None:
        return self.result.batches.get(batch) if self.measured else None


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


@dataclass
class CpuRecord:
    model: str
    isa: dict[str, bool]
    logical_cores: int | None = None
    usable_cores: list[int] | None = None
    isa_class: str = ""


@dataclass
class ForeignRecord:
    python: str
    versions: dict[str, str | None]


IPEX_PACKAGE = "intel-extension-for-pytorch"


@dataclass
class Environment:
    """The host and software a run measured on (qexport.envinfo.environment)."""

    python: str
    cpu: CpuRecord
    libraries: dict[str, str | None]
    gpus: list[str] = field(default_factory=list)
    platform: str = ""
    foreign_environments: dict[str, ForeignRecord | None] = field(default_factory=dict)
    git_commit: str | None = None

    def library_summary(self) -> str:
        """'torch 2.14.0, onnxruntime 1.23.0, ..., IPEX not installed': every library the run recorded
        (qexport.envinfo.LIBRARIES, the one list) that is installed, so no report keeps its own list."""
        installed = [f"{name} {version}" for name, version in self.libraries.items()
                     if version and name != IPEX_PACKAGE]
        return ", ".join([*installed, f"IPEX {self.ipex_summary()}"])

    def ipex_summary(self) -> str:
        """'2.8.0', '2.8.0 (own environment, torch 2.8.0)' or 'not installed'."""
        local = self.libraries.get(IPEX_PACKAGE)
        if local:
            return local
        own = self.foreign_environments.get("ipex")
        if own and own.versions.get("intel_extension_for_pytorch"):
            return f"{own.versions['intel_extension_for_pytorch']} (own environment, torch {own.versions.get('torch')})"
        return "not installed (make setup-ipex)"


@dataclass
class Noise:
    batch: str
    median_round_spread_pct: float
    noisy: bool
    advice: str = ""


@dataclass
class Tie:
    """Neighbours in the latency ranking the measurement cannot tell apart."""

    batch: str
    faster: str
    slower: str
    ratio: Interval


@dataclass
class BenchDocument:
    created: str
    command: str
    options: RunOptions
    environment: Environment
    rows: list[BenchRow]
    duration_s: float = 0.0
    directory: str = ""
    data: DataInfo | None = None  # the evaluation set; None: accuracy not measured
    baseline: str = BASELINE
    noise: Noise | None = None
    ties: list[Tie] = field(default_factory=list)
    best_fp32: dict[str, str] = field(default_factory=dict)  # batch size -> the fastest fp32 family there
    schema: str = BENCH_SCHEMA
    schema_version: int = BENCH_SCHEMA_VERSION

    @property
    def batch_keys(self) -> list[str]:
        return [str(b) for b in self.options.batch_sizes]

    def measured_rows(self) -> list[BenchRow]:
        return [row for row in self.rows if row.measured]

    def to_dict(self) -> dict:
        return to_json(self)


def current_environment() -> Environment:
    """This host and its software, as every report prints it (runtimes' own environments included)."""
    from qexport.envinfo import environment, git_commit
    from qexport.runtimes.foreign import foreign_environments

    facts = {**environment(foreign_environments()), "git_commit": git_commit(Path(__file__).parent)}
    return parse(Environment, facts, "the environment")


def parse_round(data: Any, where: str) -> RoundResult:
    return parse(RoundResult, data, where)


def load_bench(path: Path) -> BenchDocument:
    """A bench.json this qexport understands, or one sentence; the one reader of the format."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:  # ValueError: bad JSON or not UTF-8
        raise QExportError(f"Cannot read bench results {path} ({err}); pass bench.json files written by `qexport bench`.") from err
    if not isinstance(data, dict) or data.get("schema") != BENCH_SCHEMA \
            or data.get("schema_version") not in READABLE_BENCH_VERSIONS:
        raise QExportError(f"{path} is not a qexport bench.json (schema {BENCH_SCHEMA} version "
                           f"{' or '.join(map(str, READABLE_BENCH_VERSIONS))}); rerun `qexport bench`.")
    for row in data.get("rows") or []:
        if isinstance(row, dict) and row.get("result") == {}:  # unmeasured rows were written as {} before
            row["result"] = None
    return parse(BenchDocument, data, str(path))
