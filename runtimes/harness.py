"""``qexport bench``: measure every artifact of a folder, each in its own pinned worker process.

The harness never imports a runtime itself: it validates manifests, checks hashes, prepares the
evaluation set as .npy files, and starts one worker per artifact with the thread environment
already set, so nothing one runtime does (thread pools, allocator state, JIT caches) can bleed
into another's numbers.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qexport.manifest import artifact_file, discover, host_problem_for
from qexport.envinfo import environment, git_commit
from qexport.errors import QExportError, RuntimeMissing, last_line
from qexport.fsutil import sha256_file
from qexport.runtimes.foreign import foreign_environments
from qexport.selection import match_keys

BENCH_SCHEMA = "qexport.bench"
BENCH_SCHEMA_VERSION = 2  # 2: rounds, 95 % intervals and paired ratios
BASELINE = "torchscript-fp32"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS")


@dataclass(frozen=True)
class BenchOptions:
    """How to measure; every field is printed with the results."""

    threads: int = 1
    cores: tuple[int, ...] | None = None
    batch_sizes: tuple[int, ...] = (1, 32, 128)
    rounds: int = 5          # fresh worker processes per artifact, interleaved across artifacts
    warmup: int = 5          # per round: fixed calls, then windows until the median is stable
    min_count: int = 10      # per round and batch size
    min_seconds: float = 0.5  # per round and batch size
    eval_samples: int | None = None
    device: str = "cpu"
    timeout: float = 900.0
    allow_modified: bool = False
    only: tuple[str, ...] | None = None
    cpu_fp16: bool = False  # fp16 is a GPU format: on CPU it is measured only when asked

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

    def pinned_cores(self) -> list[int]:
        """Explicit --cores, else the last N usable cores (core 0 tends to take interrupts)."""
        return list(self.cores) if self.cores else usable_cores()[-self.threads:]


def usable_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))


@dataclass
class Row:
    family: str
    file: str
    format: str
    precision: str
    runtime: str
    status: str = "ok"  # ok | failed | skipped | refused
    reason: str = ""
    size_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    build_top1: float | None = None
    result: dict = field(default_factory=dict)
    rounds: list[dict] = field(default_factory=list)  # one worker result per round, in order


def check_row(manifest_file: Path, manifest: dict, options: BenchOptions) -> Row:
    """Build the row and decide, before starting a worker, whether it can be measured at all."""
    row = Row(family=manifest["family"], file=manifest["artifact"]["file"], format=manifest["format"],
              precision=manifest["precision"], runtime=manifest["runtime"]["name"],
              size_bytes=manifest["artifact"]["size_bytes"], build_top1=manifest["evaluation"].get("top1"))
    path = artifact_file(manifest_file, manifest)
    if not path.is_file():
        row.status, row.reason = "failed", f"{path.name} is missing; rebuild with `qexport build`."
        return row
    row.size_bytes = path.stat().st_size
    if sha256_file(path) != manifest["artifact"]["sha256"]:
        if not options.allow_modified:
            row.status, row.reason = "refused", (f"{path.name} does not match the sha256 in its manifest (modified or "
                                                 "tampered); rebuild it, or pass --allow-modified to measure it anyway.")
            return row
        row.notes.append("MODIFIED: sha256 differs from the manifest (--allow-modified)")
    cpu_problem = host_problem_for(manifest) if options.device == "cpu" else None
    if cpu_problem:  # checked before any worker loads it: a SIGILL is never the message
        row.status, row.reason = "refused", cpu_problem
    elif options.device not in manifest.get("devices", ["cpu"]):
        row.status, row.reason = "skipped", f"{row.family} does not run on {options.device}."
    elif options.device == "cpu" and manifest["precision"] == "fp16" and not options.cpu_fp16:
        row.status, row.reason = "skipped", ("fp16 is a GPU format (use --device cuda); on CPU it runs through slow "
                                             "fallback kernels -- pass --cpu-fp16 to measure it anyway")
    elif options.device == "cpu" and manifest["precision"] == "fp16":
        row.notes.append("fp16 on CPU: a GPU format; the CPU runs it through slow fallback kernels")
    elif options.device == "cuda" and not cuda_available():
        row.status, row.reason = "skipped", "no CUDA GPU on this machine."
    else:
        try:
            worker_python(row.runtime)  # a runtime with its own environment: is it installed?
        except RuntimeMissing as err:
            row.status, row.reason = "skipped", str(err)
    return row


def cuda_available() -> bool:
    from qexport.envinfo import gpu_info

    return bool(gpu_info())


def worker_env(options: BenchOptions) -> dict:
    from qexport.runtimes.foreign import child_env

    return {**child_env(), **{name: str(options.threads) for name in THREAD_VARIABLES}}


def worker_python(runtime: str) -> str:
    """This interpreter, or the one of the runtime's own environment (IPEX)."""
    from qexport.runtimes.foreign import python_for

    return python_for(runtime) or sys.executable


def run_worker(spec: dict, options: BenchOptions, python: str = sys.executable) -> dict:
    """Start the worker in its own process group; kill the whole group on timeout or Ctrl-C."""
    with tempfile.TemporaryDirectory(prefix="qexport-worker-") as tmp:
        spec_file, result_file = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_file.write_text(json.dumps(spec))
        process = subprocess.Popen([python, "-m", "qexport.runtimes.worker", str(spec_file), str(result_file)],
                                   env=worker_env(options), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, start_new_session=True)
        try:
            _, stderr = process.communicate(timeout=options.timeout)
        except subprocess.TimeoutExpired:
            kill_group(process)
            return {"status": "failed", "reason": f"timed out after {options.timeout:.0f} s (--timeout)"}
        except BaseException:
            kill_group(process)
            raise
        if result_file.is_file():
            return json.loads(result_file.read_text())
        tail = last_line(stderr or "", 160)
        return {"status": "failed", "reason": f"worker crashed (exit {describe_exit(process.returncode)}) {tail}".strip()}


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


def input_size(manifest: dict) -> tuple[int, int]:
    """(height, width) the artifact takes, from its manifest's NCHW input shape."""
    _, _, height, width = manifest["input"]["shape"]
    return int(height), int(width)


def data_mismatch(manifest: dict, data) -> str | None:
    """Why ``data`` cannot score this artifact (layout, image size or classes differ), or None."""
    name = manifest["artifact"]["file"]
    if manifest["input"].get("layout", "NCHW") != "NCHW":
        return f"{name} takes {manifest['input']['layout']} input and qexport prepares NCHW"
    if tuple(data.image_size) != input_size(manifest):
        return (f"{name} takes {input_size(manifest)[0]}×{input_size(manifest)[1]} images and the evaluation set "
                f"({data.name}) is {data.image_size[0]}×{data.image_size[1]}")
    classes = list(manifest["output"].get("classes", []))
    if classes != list(data.classes):
        return (f"{name} predicts {len(classes)} classes ({', '.join(classes[:3])}…) and the evaluation set "
                f"({data.name}) has {len(data.classes)} ({', '.join(list(data.classes)[:3])}…)")
    return None


def require_matching_data(entries: list[tuple[Path, dict]], data) -> None:
    """Refuse, before any worker starts, an evaluation set that would give a wrong accuracy."""
    for _, manifest in entries:
        problem = data_mismatch(manifest, data)
        if problem:
            raise QExportError(f"{problem}; pass the --data/--data-dir it was built with, or --no-accuracy.")


def data_source(manifest: dict) -> str:
    """cifar10 / synthetic / imagefolder, from what the manifest recorded about its data."""
    name = manifest["data"].get("name", "cifar10")
    return name if name in ("cifar10", "synthetic") else "imagefolder"


def evaluation_data(entries: list[tuple[Path, dict]], source: str | None, data_dir: Path | None):
    """The data to score the artifacts on, prepared the way their manifests say they were built.

    Source, image size and (for synthetic data) sample counts come from the first manifest unless
    given; an image folder is read at the artifact's own input size, never at a default.
    """
    from qexport.data import load_dataset

    first = entries[0][1]
    recorded = first["data"]
    source = source or data_source(first)
    if source == "imagefolder" and data_dir is None and Path(recorded.get("source", "")).is_dir():
        data_dir = Path(recorded["source"])  # the folder it was built from, when it is still here
    samples = (recorded.get("train_samples", 512), recorded.get("test_samples", 256))
    return load_dataset(source, data_dir, image_size=input_size(first)[0], synthetic_samples=samples)


class EvalSet:
    """The test split, normalised per manifest statistics, written once as .npy for workers."""

    def __init__(self, data, samples: int | None, seed: int, folder: Path):
        from qexport.data import seeded_subset

        self.data = data
        self.split = seeded_subset(data.test, samples, seed) if samples and samples < len(data.test) else data.test
        self.folder = folder
        self._files: dict[tuple, tuple[str, str]] = {}

    def files_for(self, manifest: dict) -> tuple[str, str]:
        from qexport.data import normalize

        key = (tuple(manifest["input"]["mean"]), tuple(manifest["input"]["std"]))
        if key not in self._files:
            n = len(self._files)
            inputs, labels = self.folder / f"inputs{n}.npy", self.folder / "labels.npy"
            np.save(inputs, normalize(self.split.images, *key).numpy())
            np.save(labels, self.split.labels.numpy())
            self._files[key] = (str(inputs), str(labels))
        return self._files[key]


def bench_directory(directory: Path, options: BenchOptions, data=None, seed: int = 0,
                    progress=None) -> dict:
    """Measure every artifact in ``directory``; returns the bench.json document."""
    entries = discover(directory)
    if options.only:
        chosen = set(match_keys(options.only, dict.fromkeys(m["family"] for _, m in entries), "family in this folder"))
        entries = [(p, m) for p, m in entries if m["family"] in chosen]
    cores = options.pinned_cores()
    rows = [check_row(manifest_file, manifest, options) for manifest_file, manifest in entries]
    logits: dict[str, np.ndarray] = {}
    started = time.time()
    if data is not None:
        require_matching_data(entries, data)
    with tempfile.TemporaryDirectory(prefix="qexport-bench-") as tmp:
        eval_set = EvalSet(data, options.eval_samples, seed, Path(tmp)) if data is not None else None
        # Interleaved rounds (A B C … A B C …): slow drift of the host hits every artifact alike.
        for round_index in range(options.rounds):
            for number, ((manifest_file, manifest), row) in enumerate(zip(entries, rows)):
                if progress and (row.status == "ok" or round_index == 0):
                    progress(number, len(entries), row, round_index, options.rounds)
                if row.status != "ok":
                    continue
                first = round_index == 0
                spec = worker_spec(manifest_file, manifest, options, cores, eval_set if first else None,
                                   Path(tmp) / f"logits{number}.npy", first_round=first)
                result = run_worker(spec, options, python=worker_python(row.runtime))
                if result.get("status") != "ok":
                    row.status, row.reason = result.get("status", "failed"), result.get("reason", "unknown failure")
                    continue
                row.rounds.append(result)
                if spec.get("logits_out"):
                    logits[row.family] = np.load(spec["logits_out"])
        for row in rows:
            if row.status == "ok":
                row.result = combine_rounds(row.rounds)
        add_agreement(rows, logits)
    return make_document(rows, options, cores, data, started, directory)


def combine_rounds(rounds: list[dict]) -> dict:
    """One result from a row's rounds: latencies pooled over all rounds' calls, each statistic's
    per-round values kept, and the p50 as the geometric mean of round p50s with its 95 % interval.
    Load, memory, accuracy and harness overhead come from the first round (which measured them)."""
    from qexport.runtimes.stats import geometric_interval, spread_pct, summarize

    combined = {key: value for key, value in rounds[0].items() if key != "batches"}
    combined["rounds"] = len(rounds)
    combined["peak_rss_mb"] = max(r["peak_rss_mb"] for r in rounds)
    combined["batches"] = {}
    for batch, first in rounds[0]["batches"].items():
        per_round = [r["batches"][batch] for r in rounds]
        pooled = summarize([ms for r in per_round for ms in r.pop("latencies_ms")], int(batch))
        round_p50 = [r["p50_ms"] for r in per_round]
        p50 = geometric_interval(round_p50)
        combined["batches"][batch] = {
            **pooled, "p50_ms": p50.estimate, "throughput_ips": int(batch) * 1000.0 / p50.estimate,
            "pooled_p50_ms": pooled["p50_ms"], "p50_interval_ms": p50.to_dict(), "round_p50_ms": round_p50,
            "round_spread_pct": spread_pct(round_p50), "warmup": [r["warmup"] for r in per_round],
            "harness_overhead_pct": first.get("harness_overhead_pct")}
    return combined


def worker_spec(manifest_file: Path, manifest: dict, options: BenchOptions, cores: list[int],
                eval_set: EvalSet | None, logits_out: Path, first_round: bool = True) -> dict:
    """What one worker measures; accuracy and the harness-overhead check only in the first round."""
    spec = {"artifact": str(artifact_file(manifest_file, manifest)), "runtime": manifest["runtime"]["name"],
            "manifest": manifest, "device": options.device, "threads": options.threads, "cores": cores,
            "batch_sizes": list(options.batch_sizes), "warmup": options.warmup, "min_count": options.min_count,
            "min_seconds": options.min_seconds, "input_shape": manifest["input"]["shape"][1:],
            "overhead": first_round}
    files = eval_set.files_for(manifest) if eval_set is not None else None
    if files:
        spec.update(eval_inputs=files[0], eval_labels=files[1], logits_out=str(logits_out))
    return spec


def add_agreement(rows: list[Row], logits: dict[str, np.ndarray]) -> None:
    """Top-1 agreement and max |Δlogit| of every artifact against the fp32 TorchScript artifact."""
    reference = logits.get(BASELINE)
    if reference is None:
        return
    for row in rows:
        mine = logits.get(row.family)
        if mine is not None and mine.shape == reference.shape:
            row.result.setdefault("eval", {}).update(
                agreement_with_fp32=float((mine.argmax(1) == reference.argmax(1)).mean()),
                max_abs_logit_diff=float(np.abs(mine - reference).max()))


def add_ratios(rows: list[dict]) -> None:
    """Speed-up vs the fp32 TorchScript baseline per batch size, paired round by round, with its
    95 % interval; and the size ratio."""
    from qexport.runtimes.stats import paired_ratio

    base = next((r for r in rows if r["family"] == BASELINE and r["status"] == "ok"), None)
    for row in rows:
        if base is None or row["status"] != "ok":
            continue
        row["size_ratio_vs_fp32"] = base["size_bytes"] / row["size_bytes"]
        if row is base:  # 1 by definition: no interval to show, nothing to mark '~'
            row["speedup_vs_fp32"] = {b: 1.0 for b in row["result"]["batches"]}
            continue
        intervals = {b: paired_ratio(base["result"]["batches"][b]["round_p50_ms"], stats["round_p50_ms"])
                     for b, stats in row["result"]["batches"].items() if b in base["result"]["batches"]}
        row["speedup_vs_fp32"] = {b: i.estimate for b, i in intervals.items()}
        row["speedup_interval"] = {b: i.to_dict() for b, i in intervals.items()}


NOISY_SPREAD_PCT = 5.0


def noise_summary(rows: list[dict], batch: str) -> dict:
    """How much the host moved between rounds (median over artifacts of the round-to-round spread of
    p50 at ``batch``), and what helps when that is large."""
    from qexport.runtimes.stats import percentile

    spreads = sorted(r["result"]["batches"][batch]["round_spread_pct"] for r in rows
                     if r["status"] == "ok" and batch in r["result"].get("batches", {}))
    median = percentile(spreads, 50) if spreads else 0.0
    noisy = median > NOISY_SPREAD_PCT
    advice = (f"this host was noisy: p50 moved {median:.1f} % between rounds (median over artifacts, batch {batch}); "
              "more rounds (--rounds), longer rounds (--min-seconds), an idle machine or isolated cores "
              "(isolcpus, no other work on the pinned core) narrow the intervals") if noisy else ""
    return {"batch": batch, "median_round_spread_pct": median, "noisy": noisy, "advice": advice}


def ties(rows: list[dict], batch: str) -> list[dict]:
    """Neighbours in the latency ranking at ``batch`` whose paired ratio interval contains 1: the
    measurement cannot tell them apart, and the report must not rank them."""
    from qexport.runtimes.stats import paired_ratio

    ranked = sorted((r for r in rows if r["status"] == "ok" and batch in r["result"].get("batches", {})),
                    key=lambda r: r["result"]["batches"][batch]["p50_ms"])
    found = []
    for faster, slower in zip(ranked, ranked[1:]):
        ratio = paired_ratio(slower["result"]["batches"][batch]["round_p50_ms"],
                             faster["result"]["batches"][batch]["round_p50_ms"])
        if ratio.low is not None and not ratio.excludes(1.0):
            found.append({"batch": batch, "faster": faster["family"], "slower": slower["family"],
                          "ratio": ratio.to_dict()})
    return found


def make_document(rows: list[Row], options: BenchOptions, cores: list[int], data, started: float,
                  directory: Path) -> dict:
    row_dicts = [asdict(r) for r in rows]
    for row in row_dicts:
        del row["rounds"]  # combined into row["result"]; the raw rounds would only repeat it
    add_ratios(row_dicts)
    return {
        "schema": BENCH_SCHEMA,
        "schema_version": BENCH_SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "command": " ".join(shlex.quote(a) for a in ["qexport", *sys.argv[1:]]),
        "directory": str(directory),
        "options": {**asdict(options), "pinned_cores": cores},
        "environment": {**environment(foreign_environments()), "git_commit": git_commit(Path(__file__).parent)},
        "data": data.describe() if data is not None else None,
        "baseline": BASELINE,
        "rows": row_dicts,
        "noise": noise_summary(row_dicts, str(options.batch_sizes[0])),
        "ties": [tie for b in options.batch_sizes for tie in ties(row_dicts, str(b))],
    }
