"""The bench document (bench.json) and the one result a worker hands back, as types.

``qexport bench`` writes a :class:`BenchDocument`; the reports, ``compare`` and ``pack`` read it
back through :func:`load_bench` only, so a malformed or truncated file is one sentence wherever it
is read. Workers write a :class:`RoundResult` (one fresh process, one round) that the harness
parses the same way before combining rounds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qexport.core.documents import TextEnum, parse, renamed, to_json
from qexport.core.errors import QExportError
from qexport.core.manifest import DataInfo, LoadHints
from qexport.runtimes.bench_options import RunOptions, ScenarioSettings
from qexport.runtimes.environment import Environment
from qexport.runtimes.stats import Interval, LatencySummary

BENCH_SCHEMA = "qexport.bench"
BENCH_SCHEMA_VERSION = 3  # 3: agreement_with_fp32 named agreement_with_baseline_artifact; 2: rounds, intervals
READABLE_BENCH_VERSIONS = (1, 2, 3)  # 1: single pass, no rounds (read as one round)

# The family every speed-up, size ratio and bench agreement is measured against: the one definition
# the exporter registers it under and the reports look it up by.
BASELINE = "torchscript-fp32"
# Images per forward pass wherever accuracy is scored (a build's evaluation, a bench worker's):
# large enough to amortise per-call cost, small enough for any artifact's memory.
EVAL_BATCH = 250


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
    settings: dict[str, str] = field(default_factory=dict)  # the runtime settings it runs with (runtimes.settings)
    golden: str | None = None      # golden .npz to check the outputs against under those settings
    golden_atol: float = 0.0


@dataclass
class EvalResult:
    """Top-1 on the test split in the artifact's runtime, and its agreement with the baseline
    *artifact* (:data:`BASELINE` in its runtime) -- not with the eager model, as a manifest's is."""

    samples: int
    top1: float
    agreement_with_baseline_artifact: float | None = renamed("agreement_with_fp32", default=None)
    max_abs_logit_diff: float | None = None


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
    golden_max_diff: float | None = None  # largest |Δ| from the golden outputs, when the spec asked
    golden_ok: bool | None = None         # within the golden tolerance

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
    # Cold start, one value per round (each round is a fresh process): loading the file, the first
    # call after it, and their sum -- what a serverless or autoscaled deployment pays per start.
    round_load_ms: list[float] = field(default_factory=list)
    round_first_call_ms: list[float] = field(default_factory=list)
    load_ms_interval: Interval | None = None
    first_call_ms_interval: Interval | None = None
    cold_start_ms_interval: Interval | None = None

    def cold_start_rounds(self) -> list[float]:
        """Load plus first call, per round (empty where a round did not record its first call)."""
        return [load + first for load, first in zip(self.round_load_ms, self.round_first_call_ms)]


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
    sha256: str = ""  # of the artifact as measured ("": a bench.json from before it was recorded)
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
    # batch size -> the runtime settings `qexport tune` recorded and this bench applied (absent: defaults)
    settings: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.status = RowStatus(self.status)  # a status given as its text is checked and typed here

    @property
    def measured(self) -> bool:
        return self.status is RowStatus.OK and self.result is not None

    def batch(self, batch: str) -> BatchResult | None:
        return self.result.batches.get(batch) if self.measured else None


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
