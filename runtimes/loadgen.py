"""MLPerf Inference LoadGen scenarios for one loaded artifact, run inside its pinned bench worker.

The LoadGen (``mlcommons-loadgen``, module ``mlperf_loadgen``) decides when queries arrive and
whether a run is VALID; qexport only serves them. The runner is wrapped as a SUT whose issue
callback just queues the samples -- a worker thread computes and completes them, because work
inside the callback delays LoadGen's scheduler (p99 7.0 vs 4.5 ms in a trial at 200 QPS) -- and
the test split, preprocessed once, is the QSL, in memory. Every figure comes from LoadGen's own
``mlperf_log_detail.txt``, kept per artifact and scenario for the reader to check.

Traps handled here: LoadGen aborts the process at exit when its output folder does not exist (it
is created first); an ``audit.config`` in the working directory silently overrides the settings
(each run happens in a fresh empty folder as working directory); the expected latency / QPS decide
how many queries are generated (they come from the worker's own tight-loop measurement); early
stopping needs >= 64 queries for a SingleStream p90 and >= 662 for a MultiStream p99.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qexport.core.errors import QExportError, first_line
from qexport.runtimes.results import InstancingChoice, LoadGenAccuracy, ScenarioResult, ServerPoint
from qexport.runtimes.bench_options import ScenarioSettings
from qexport.runtimes.worker import pin

SCENARIOS = ("single-stream", "multi-stream", "server", "offline")
LOADGEN_NAMES = {"single-stream": "SingleStream", "multi-stream": "MultiStream", "server": "Server",
                 "offline": "Offline"}
MULTI_STREAM_SAMPLES = 8
# Early stopping's minimums for the percentile each scenario reports (server: ~460 queries all under the
# bound for a p99; a short run at a low QPS would otherwise be INVALID for too few queries, not latency).
MIN_QUERIES = {"single-stream": 64, "multi-stream": 662, "server": 500, "offline": 1}
OFFLINE_BATCH = 32
OFFLINE_MARGIN = 1.5
INSTANCING = ("auto", "per-core", "threads")


@dataclass
class Instances:
    """The loaded artifact instances that serve queries, and the cores each serving thread is
    pinned to (None: wherever the process may run)."""

    runners: list
    pins: list[list[int]] | None = None

    @classmethod
    def single(cls, runner, cores: list[int] | None = None) -> "Instances":
        return cls([runner], [cores] if cores else None)


class ServedRunner:
    """SUT: issue_cb only queues; one thread per instance takes work from the queue, runs its
    instance and completes the samples.

    A query is queued in chunks of at most ``batch`` samples: Offline issues every sample as one
    query, and a whole query on the queue would keep all instances but one idle. A serving thread
    whose runner raises still completes its samples (LoadGen would otherwise wait forever) and the
    error is raised once the run ends."""

    def __init__(self, lg, instances: Instances, inputs: np.ndarray, batch: int):
        self.lg, self.inputs, self.batch = lg, inputs, batch
        self.queue: queue.Queue = queue.Queue()
        self.error: BaseException | None = None
        pins = instances.pins or [None] * len(instances.runners)
        self.threads = [threading.Thread(target=self._serve, args=(runner, cores), daemon=True)
                        for runner, cores in zip(instances.runners, pins)]
        for thread in self.threads:
            thread.start()

    def issue(self, samples) -> None:
        samples = list(samples)
        for start in range(0, len(samples), self.batch):
            self.queue.put(samples[start:start + self.batch])

    def flush(self) -> None:
        pass

    def stop(self) -> None:
        for _ in self.threads:
            self.queue.put(None)
        for thread in self.threads:
            thread.join()

    def _serve(self, runner, cores: list[int] | None) -> None:
        pin(cores)  # Linux affinity is per thread: pid 0 is the calling thread, so each gets its core
        while (samples := self.queue.get()) is not None:
            self._complete(runner, samples)

    def _complete(self, runner, samples) -> None:
        try:
            predicted = runner.predict(self.inputs[[s.index for s in samples]]).argmax(1).astype(np.int32)
        except Exception as err:  # noqa: BLE001 -- reported after the run, see the class docstring
            self.error = self.error or err
            predicted = np.full(len(samples), -1, dtype=np.int32)
        answers = [np.array([p], dtype=np.int32) for p in predicted]  # alive until QuerySamplesComplete returns
        self.lg.QuerySamplesComplete([self.lg.QuerySampleResponse(s.id, a.ctypes.data, a.nbytes)
                                      for s, a in zip(samples, answers)])


@dataclass(frozen=True)
class Layout:
    """How several cores serve: one single-threaded instance per core, or one instance with a
    thread per core. On one core the two are the same."""

    mode: str
    cores: tuple[int, ...]

    @property
    def instances(self) -> int:
        return len(self.cores) if self.mode == "per-core" else 1

    @property
    def threads_each(self) -> int:
        return 1 if self.mode == "per-core" else len(self.cores)

    def load(self, load_runner: Callable[[int], object]) -> Instances:
        """Fresh instances for this layout (loading sets the runtime's thread count, which for torch
        is process-wide: always load right before serving)."""
        pins = [[core] for core in self.cores] if self.mode == "per-core" else [list(self.cores)]
        return Instances([load_runner(self.threads_each) for _ in range(self.instances)], pins)

    def choice(self, chosen_by: str, offline: dict[str, float]) -> InstancingChoice:
        return InstancingChoice(mode=self.mode, instances=self.instances, threads_each=self.threads_each,
                                cores=list(self.cores), chosen_by=chosen_by, offline_samples_per_s=offline)


@contextlib.contextmanager
def clean_folder(folder: Path) -> Iterator[Path]:
    """Run LoadGen with ``folder`` (created, empty) as working directory: no stray audit.config."""
    folder.mkdir(parents=True, exist_ok=True)
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(previous)


def run_loadgen(lg, instances: Instances, inputs: np.ndarray, settings, folder: Path, batch: int) -> dict:
    """One LoadGen test; returns the ``result_*`` entries of its detail log."""
    folder = folder.resolve()  # LoadGen runs with this folder as working directory: no relative paths
    served = ServedRunner(lg, instances, inputs, batch)
    sut = lg.ConstructSUT(served.issue, served.flush)
    qsl = lg.ConstructQSL(len(inputs), min(len(inputs), 1024), lambda _: None, lambda _: None)
    log = lg.LogSettings()
    log.log_output.outdir = str(folder)
    log.log_output.copy_summary_to_stdout = False
    try:
        with clean_folder(folder):
            lg.StartTestWithLogSettings(sut, qsl, settings, log)
    finally:
        served.stop()
        lg.DestroyQSL(qsl)
        lg.DestroySUT(sut)
    if served.error is not None:
        raise QExportError(f"the artifact failed while serving LoadGen queries "
                           f"({first_line(str(served.error), 200, default=type(served.error).__name__)}).")
    return read_detail_log(folder / "mlperf_log_detail.txt")


def read_detail_log(path: Path) -> dict:
    """Every ``:::MLLOG {json}`` line of LoadGen's detail log, as key -> value."""
    values = {}
    for line in path.read_text().splitlines():
        if line.startswith(":::MLLOG "):
            entry = json.loads(line[len(":::MLLOG "):])
            values[entry.get("key")] = entry.get("value")
    return values


def ms(log: dict, key: str) -> float | None:
    value = log.get(key)
    return None if value is None else float(value) / 1e6


@dataclass(frozen=True)
class Expectations:
    """What the worker's tight loop measured, for LoadGen's expected latency / QPS settings.
    Expecting a query to take longer than it does generates too few queries and fails "min
    duration", so each errs low: multi-stream's 8 samples run as one batch, at the best per-sample
    latency measured, not 8 single ones."""

    single_ms: float        # one sample alone (the smallest batch measured, per sample)
    per_sample_ms: float    # per sample at the best batch size measured
    offline_qps: float      # the best throughput measured


def loadgen_settings(lg, scenario: str, options: ScenarioSettings, expect: Expectations):
    """LoadGen settings for one scenario, expectations taken from this worker's own measurement."""
    ts = lg.TestSettings()
    ts.scenario = getattr(lg.TestScenario, LOADGEN_NAMES[scenario])
    ts.mode = lg.TestMode.PerformanceOnly
    if options.official:
        ts.min_duration_ms = 600_000
    else:
        ts.min_duration_ms = int(options.min_duration_s * 1000)
        ts.min_query_count = MIN_QUERIES[scenario]
    ts.single_stream_expected_latency_ns = int(expect.single_ms * 1e6)
    ts.multi_stream_samples_per_query = MULTI_STREAM_SAMPLES
    ts.multi_stream_expected_latency_ns = int(expect.per_sample_ms * MULTI_STREAM_SAMPLES * 1e6)
    ts.server_target_latency_ns = int(options.target_latency_ms * 1e6)
    # Offline issues expected QPS x duration samples at once: expecting too little finishes early and
    # fails "min duration"; half again the tight loop's best throughput keeps it busy long enough.
    ts.offline_expected_qps = OFFLINE_MARGIN * expect.offline_qps
    return ts


def result_of(scenario: str, log: dict, folder: Path) -> ScenarioResult:
    valid = log.get("result_validity") == "VALID"
    per_query = "_per_query" if scenario == "multi-stream" else ""
    qps = (log.get("result_samples_per_second") if scenario == "offline"
           else log.get("result_completed_samples_per_sec") if scenario == "server"
           else log.get("result_qps_with_loadgen_overhead"))
    return ScenarioResult(
        scenario=scenario, valid=valid, reason="" if valid else invalid_reason(scenario, log),
        p50_ms=ms(log, f"result_50.00_percentile{per_query}_latency_ns"),
        p90_ms=ms(log, f"result_90.00_percentile{per_query}_latency_ns"),
        p99_ms=ms(log, f"result_99.00_percentile{per_query}_latency_ns"),
        qps=None if qps is None else float(qps), queries=log.get("result_query_count"), log_dir=str(folder))


def invalid_reason(scenario: str, log: dict) -> str:
    """LoadGen's reason for an INVALID run, and the fix."""
    if log.get("result_min_duration_met") is False:
        return "min duration not met: raise the expected QPS, or the duration (--scenario-seconds)"
    if log.get("result_min_queries_met") is False or log.get("early_stopping_met") is False:
        return (f"too few queries for the percentile (early stopping needs >= {MIN_QUERIES[scenario]}): "
                "raise the duration (--scenario-seconds)")
    if scenario == "server":
        return "the p99 bound was exceeded at this QPS: lower the target QPS, or raise --target-latency-ms"
    return str(log.get("result_invalid_reason") or "LoadGen marked the run INVALID (see mlperf_log_detail.txt)")


def server_capacity(expect: Expectations, cores: int, offline_qps: float | None) -> float:
    """The most a layout can serve one query at a time: every core back to back at the single-sample
    latency, and never more than the layout served offline (one instance with a thread per core
    serves a batch-1 query on all its threads at once, far from ``cores`` times one core)."""
    back_to_back = cores * 1000.0 / expect.single_ms
    return min(back_to_back, offline_qps) if offline_qps else back_to_back


def server_peak(lg, instances: Instances, inputs, options: ScenarioSettings, expect: Expectations, folder: Path,
                capacity: float) -> ScenarioResult:
    """Bisection over LoadGen Server runs for the highest target QPS that stays VALID, between 0 and
    1.2 x ``capacity``: a run whose p99 broke the bound moves the search down; any other run (VALID,
    or INVALID only for too few queries) moves it up, since the latency held there."""
    low, high = 0.0, 1.2 * capacity
    best: ScenarioResult | None = None
    curve = []
    for step in range(options.server_steps):
        target = (low + high) / 2 if step else 0.7 * capacity
        settings = loadgen_settings(lg, "server", options, expect)
        settings.server_target_qps = target
        run_folder = folder / f"server-{step}-{target:.0f}qps"
        result = result_of("server", run_loadgen(lg, instances, inputs, settings, run_folder, batch=1), run_folder)
        result.target_qps = target
        curve.append(ServerPoint(target, result.p99_ms, result.valid))
        if result.valid:
            best = result
        if result.p99_ms is not None and result.p99_ms > options.target_latency_ms:
            high = target
        else:
            low = target
    chosen = best or result
    chosen.curve = curve
    if best is None and result.p99_ms is not None and result.p99_ms > options.target_latency_ms:
        chosen.reason = (f"no VALID run in {len(curve)} tries: p99 {result.p99_ms:.1f} ms even at "
                         f"{result.target_qps:.0f} QPS, over the {options.target_latency_ms:g} ms bound -- the "
                         "artifact's own latency tail exceeds it: raise --target-latency-ms")
    elif best is None:
        chosen.reason = f"no VALID run in {len(curve)} tries (last at {result.target_qps:.0f} QPS: {result.reason})"
    return chosen


def run_scenarios(runner, load_runner: Callable[[int], object], inputs: np.ndarray, options: ScenarioSettings,
                  expect: Expectations, folder: Path, pinned: list[int]) -> tuple[list[ScenarioResult],
                                                                                  InstancingChoice | None]:
    """Every requested scenario for one artifact; logs under ``folder/<scenario>``.

    Single- and multi-stream measure latency: the tight loop's instance serves on its pinned cores.
    Server and offline measure what the cores given serve (``options.cores``): with one instance
    per core or one instance with a thread per core -- as asked, or (auto) whichever serves more
    samples per second offline, both measured and recorded.
    """
    import mlperf_loadgen as lg

    found: dict[str, ScenarioResult] = {}
    for scenario in ("single-stream", "multi-stream"):
        if scenario in options.scenarios:
            log = run_loadgen(lg, Instances.single(runner, pinned), inputs,
                              loadgen_settings(lg, scenario, options, expect), folder / scenario, MULTI_STREAM_SAMPLES)
            found[scenario] = result_of(scenario, log, folder / scenario)
    choice = None
    if {"server", "offline"} & set(options.scenarios):
        cores = tuple(options.cores or pinned)
        layout, choice, found["offline"] = choose_layout(lg, load_runner, inputs, options, expect, folder, cores,
                                                         len(pinned) or 1)
        if "server" in options.scenarios:
            capacity = server_capacity(expect, len(cores), found["offline"].qps)
            found["server"] = server_peak(lg, layout.load(load_runner), inputs, options, expect, folder / "server",
                                          capacity)
    return [found[s] for s in options.scenarios if s in found], choice


def choose_layout(lg, load_runner, inputs, options: ScenarioSettings, expect: Expectations, folder: Path,
                  cores: tuple[int, ...], measured_on: int) -> tuple[Layout, InstancingChoice, ScenarioResult]:
    """The layout server and offline use, and the offline result under it. ``auto`` runs offline
    under both layouts (logs in ``offline/<layout>``) and keeps the one with more samples/s.
    The tight loop measured on ``measured_on`` cores, so its throughput scales by cores / that."""
    modes = ["per-core", "threads"] if options.instancing == "auto" and len(cores) > 1 else \
        ["per-core" if options.instancing == "auto" else options.instancing]
    scaled = Expectations(expect.single_ms, expect.per_sample_ms, expect.offline_qps * len(cores) / measured_on)
    results = {}
    for mode in modes:
        run_folder = folder / "offline" / mode if len(modes) > 1 else folder / "offline"
        log = run_loadgen(lg, Layout(mode, cores).load(load_runner), inputs,
                          loadgen_settings(lg, "offline", options, scaled), run_folder, OFFLINE_BATCH)
        results[mode] = result_of("offline", log, run_folder)
    best = max(results, key=lambda mode: results[mode].qps or 0.0)
    throughput = {mode: round(result.qps or 0.0, 1) for mode, result in results.items()}
    chosen_by = "auto" if options.instancing == "auto" else "asked"
    return Layout(best, cores), Layout(best, cores).choice(chosen_by, throughput), results[best]


def accuracy_run(runner, inputs: np.ndarray, labels: np.ndarray, folder: Path) -> LoadGenAccuracy:
    """LoadGen's AccuracyOnly mode over the whole set, decoded from mlperf_log_accuracy.json."""
    import mlperf_loadgen as lg

    settings = lg.TestSettings()
    settings.scenario = lg.TestScenario.Offline
    settings.mode = lg.TestMode.AccuracyOnly
    settings.offline_expected_qps = 1000.0
    run_loadgen(lg, Instances.single(runner), inputs, settings, folder, OFFLINE_BATCH)
    entries = json.loads((folder / "mlperf_log_accuracy.json").read_text())
    predicted = {e["qsl_idx"]: int(np.frombuffer(bytes.fromhex(e["data"]), np.int32)[0]) for e in entries}
    correct = sum(predicted[i] == int(labels[i]) for i in predicted)
    return LoadGenAccuracy(samples=len(predicted), top1=correct / max(len(predicted), 1), log_dir=str(folder))
