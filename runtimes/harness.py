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
from qexport.errors import QExportError, RuntimeMissing
from qexport.fsutil import sha256_file

BENCH_SCHEMA = "qexport.bench"
BENCH_SCHEMA_VERSION = 1
BASELINE = "torchscript-fp32"
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS")


@dataclass(frozen=True)
class BenchOptions:
    """How to measure; every field is printed with the results."""

    threads: int = 1
    cores: tuple[int, ...] | None = None
    batch_sizes: tuple[int, ...] = (1, 32, 128)
    warmup: int = 10
    min_count: int = 30
    min_seconds: float = 2.0
    eval_samples: int | None = None
    device: str = "cpu"
    timeout: float = 900.0
    allow_modified: bool = False
    only: tuple[str, ...] | None = None
    cpu_fp16: bool = False  # fp16 is a GPU format: on CPU it is measured only when asked

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise QExportError(f"--threads must be at least 1, got {self.threads}.")
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
    from runtimes.foreign import child_env

    return {**child_env(), **{name: str(options.threads) for name in THREAD_VARIABLES}}


def worker_python(runtime: str) -> str:
    """This interpreter, or the one of the runtime's own environment (IPEX)."""
    from runtimes.foreign import python_for

    return python_for(runtime) or sys.executable


def run_worker(spec: dict, options: BenchOptions, python: str = sys.executable) -> dict:
    """Start the worker in its own process group; kill the whole group on timeout or Ctrl-C."""
    with tempfile.TemporaryDirectory(prefix="qexport-worker-") as tmp:
        spec_file, result_file = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_file.write_text(json.dumps(spec))
        process = subprocess.Popen([python, "-m", "runtimes.worker", str(spec_file), str(result_file)],
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
        tail = (stderr or "").strip().splitlines()[-1:] or [""]
        return {"status": "failed", "reason": f"worker crashed (exit {describe_exit(process.returncode)}) {tail[0][:160]}".strip()}


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
        entries = [(p, m) for p, m in entries if any(m["family"] == o or m["family"].startswith(o + "-") for o in options.only)]
    cores = options.pinned_cores()
    rows: list[Row] = []
    logits: dict[str, np.ndarray] = {}
    started = time.time()
    if data is not None:
        require_matching_data(entries, data)
    with tempfile.TemporaryDirectory(prefix="qexport-bench-") as tmp:
        eval_set = EvalSet(data, options.eval_samples, seed, Path(tmp)) if data is not None else None
        for number, (manifest_file, manifest) in enumerate(entries):
            row = check_row(manifest_file, manifest, options)
            rows.append(row)
            if progress:
                progress(number, len(entries), row)
            if row.status != "ok":
                continue
            spec = worker_spec(manifest_file, manifest, options, cores, eval_set, Path(tmp) / f"logits{number}.npy")
            result = run_worker(spec, options, python=worker_python(row.runtime))
            if result.get("status") != "ok":
                row.status, row.reason = result.get("status", "failed"), result.get("reason", "unknown failure")
                continue
            row.result = result
            if spec.get("logits_out"):
                logits[row.family] = np.load(spec["logits_out"])
        add_agreement(rows, logits)
    return make_document(rows, options, cores, data, started, directory)


def worker_spec(manifest_file: Path, manifest: dict, options: BenchOptions, cores: list[int],
                eval_set: EvalSet | None, logits_out: Path) -> dict:
    spec = {"artifact": str(artifact_file(manifest_file, manifest)), "runtime": manifest["runtime"]["name"],
            "manifest": manifest, "device": options.device, "threads": options.threads, "cores": cores,
            "batch_sizes": list(options.batch_sizes), "warmup": options.warmup, "min_count": options.min_count,
            "min_seconds": options.min_seconds, "input_shape": manifest["input"]["shape"][1:]}
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
    """Speed-up (p50) and size ratio vs the fp32 TorchScript baseline, per batch size."""
    base = next((r for r in rows if r["family"] == BASELINE and r["status"] == "ok"), None)
    for row in rows:
        if base is None or row["status"] != "ok":
            continue
        row["size_ratio_vs_fp32"] = base["size_bytes"] / row["size_bytes"]
        row["speedup_vs_fp32"] = {
            b: base["result"]["batches"][b]["p50_ms"] / stats["p50_ms"]
            for b, stats in row["result"]["batches"].items() if b in base["result"]["batches"]}


def make_document(rows: list[Row], options: BenchOptions, cores: list[int], data, started: float,
                  directory: Path) -> dict:
    row_dicts = [asdict(r) for r in rows]
    add_ratios(row_dicts)
    return {
        "schema": BENCH_SCHEMA,
        "schema_version": BENCH_SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "duration_s": round(time.time() - started, 1),
        "command": " ".join(shlex.quote(a) for a in ["qexport", *sys.argv[1:]]),
        "directory": str(directory),
        "options": {**asdict(options), "pinned_cores": cores},
        "environment": {**environment(), "git_commit": git_commit(Path(__file__).parent)},
        "data": data.describe() if data is not None else None,
        "baseline": BASELINE,
        "rows": row_dicts,
    }
