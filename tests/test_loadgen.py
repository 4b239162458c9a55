"""`qexport bench --scenario`: the real MLPerf LoadGen drives an artifact under all four scenarios;
every figure comes from LoadGen's own logs (kept), INVALID runs carry LoadGen's reason and the fix,
and LoadGen's accuracy mode agrees with bench's own top-1. No timing is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("mlperf_loadgen", reason="mlcommons-loadgen is not installed: pip install 'qexport[loadgen]'")

from qexport.commands import benchreport  # noqa: E402
from qexport.runtimes.harness import BenchOptions, bench_directory  # noqa: E402
from qexport.runtimes.loadgen import MIN_QUERIES, SCENARIOS, Instances, invalid_reason, read_detail_log  # noqa: E402
from qexport.runtimes.bench_options import usable_cores
from qexport.runtimes.bench_options import ScenarioSettings
from tests.conftest import copy_artifacts  # noqa: E402

QUICK = dict(rounds=1, batch_sizes=(1, 8), min_count=3, min_seconds=0.05, warmup=1)


def test_all_scenarios_run_in_loadgen_and_its_accuracy_matches(built_artifacts, tiny_data, tmp_path):
    out, _ = built_artifacts
    folder = copy_artifacts(out, tmp_path / "a", ["resnet18.fp32.onnx"])
    cores = usable_cores()
    settings = ScenarioSettings(scenarios=list(SCENARIOS), min_duration_s=0.3, server_steps=2, cores=cores)
    doc = bench_directory(folder, BenchOptions(**QUICK, scenarios=settings, loadgen_dir=str(tmp_path / "lg")),
                          tiny_data)
    [row] = doc.rows
    assert row.status == "ok", row.reason
    assert [s.scenario for s in row.result.scenarios] == list(SCENARIOS)
    for result in row.result.scenarios:
        assert (Path(result.log_dir) / "mlperf_log_detail.txt").is_file()  # kept for the reader
        assert (result.reason == "") == result.valid, (result.scenario, result.valid, result.reason)
        assert result.valid or reason_explains_the_log(result)
    single = row.result.scenario("single-stream")
    assert isinstance(single.p90_ms, float) and single.queries >= MIN_QUERIES["single-stream"]  # parsed from the log
    assert row.result.scenario("offline").qps > 0
    assert len(row.result.scenario("server").curve) == 2
    accuracy = row.result.loadgen_accuracy
    assert accuracy.samples == len(tiny_data.test) and accuracy.top1 == pytest.approx(row.result.eval.top1)
    choice = row.result.instancing  # auto: offline under both layouts where there are 2+ cores, the faster kept
    assert choice.cores == cores and choice.chosen_by == "auto"
    if len(cores) > 1:
        tried = choice.offline_samples_per_s
        assert set(tried) == {"per-core", "threads"} and tried[choice.mode] == max(tried.values())
        assert (Path(row.result.scenario("offline").log_dir).parent / "threads" / "mlperf_log_detail.txt").is_file()
    assert "## MLPerf LoadGen scenarios" in benchreport.markdown(doc) and choice.label() in benchreport.markdown(doc)
    names = {p.name for p in benchreport.write_outputs(doc, tmp_path / "report")}
    assert "server_latency_vs_qps.png" in names


def reason_explains_the_log(result) -> bool:
    """An INVALID run says LoadGen's own verdict, explained -- or, for the server's search over
    offered QPS, that none of its runs passed."""
    if result.scenario == "server":
        return result.reason.startswith(f"no VALID run in {len(result.curve)} tries")
    return result.reason == invalid_reason(result.scenario, read_detail_log(Path(result.log_dir) / "mlperf_log_detail.txt"))


def test_an_invalid_server_run_says_why_and_what_to_change(built_artifacts, tmp_path, monkeypatch):
    out, _ = built_artifacts
    folder = copy_artifacts(out, tmp_path / "a", ["resnet18.fp32.torchscript.pt"])
    settings = ScenarioSettings(scenarios=["server"], min_duration_s=0.3, server_steps=1, target_latency_ms=0.001,
                                accuracy=False)
    monkeypatch.chdir(tmp_path)  # a relative log folder (LoadGen runs with another working directory)
    doc = bench_directory(folder, BenchOptions(**QUICK, scenarios=settings, loadgen_dir="lg"))
    server = doc.rows[0].result.scenario("server")
    assert not server.valid and "raise --target-latency-ms" in server.reason
    assert (tmp_path / "lg" / "torchscript-fp32" / "server").is_dir()


def test_instancing_as_asked_one_instance_with_a_thread_per_core(built_artifacts, tmp_path):
    out, _ = built_artifacts
    folder = copy_artifacts(out, tmp_path / "a", ["resnet18.fp32.torchscript.pt"])
    cores = usable_cores()
    settings = ScenarioSettings(scenarios=["offline"], min_duration_s=0.3, accuracy=False, cores=cores,
                                instancing="threads")
    doc = bench_directory(folder, BenchOptions(**QUICK, scenarios=settings, loadgen_dir=str(tmp_path / "lg")))
    choice = doc.rows[0].result.instancing
    assert (choice.mode, choice.instances, choice.threads_each, choice.chosen_by) == ("threads", 1, len(cores), "asked")
    assert doc.rows[0].result.scenario("offline").qps > 0


def test_layouts_pin_one_serving_thread_per_core():
    import os
    import threading

    from qexport.runtimes.loadgen import Layout
    from qexport.runtimes.worker import pin

    per_core, shared = Layout("per-core", (0, 1)), Layout("threads", (0, 1))
    assert (per_core.instances, per_core.threads_each) == (2, 1) and (shared.instances, shared.threads_each) == (1, 2)
    loaded = per_core.load(lambda threads: f"instance with {threads} thread")
    assert loaded.runners == ["instance with 1 thread"] * 2 and loaded.pins == [[0], [1]]
    assert shared.load(lambda threads: threads).pins == [[0, 1]]
    core = usable_cores()[-1]
    seen = []
    thread = threading.Thread(target=lambda: (pin([core]), seen.append(os.sched_getaffinity(0))))
    thread.start()
    thread.join()
    assert seen == [{core}] and len(os.sched_getaffinity(0)) == len(usable_cores())  # only that thread moved


class _CountingRunner:
    """A stand-in model (the LoadGen and the serving threads are real): counts the batches it
    served and sleeps like a kernel that releases the GIL."""

    def __init__(self, fail: bool = False):
        self.batches, self.fail = 0, fail

    def predict(self, batch):
        import time

        import numpy as np

        if self.fail:
            raise RuntimeError("kernel exploded\nsecond line")
        self.batches += 1
        time.sleep(0.002)
        return np.zeros((len(batch), 10), np.float32)


def _offline_settings(lg, expected_qps: float = 2000.0):
    settings = lg.TestSettings()
    settings.scenario, settings.mode = lg.TestScenario.Offline, lg.TestMode.PerformanceOnly
    settings.offline_expected_qps, settings.min_duration_ms, settings.min_query_count = expected_qps, 200, 1
    return settings


def test_offline_query_is_shared_by_every_instance(tmp_path):
    """Offline issues all samples as one query: each per-core instance must still get work."""
    import mlperf_loadgen as lg
    import numpy as np

    from qexport.runtimes.loadgen import Instances, run_loadgen

    runners = [_CountingRunner(), _CountingRunner()]
    log = run_loadgen(lg, Instances(runners), np.zeros((64, 3, 4, 4), np.float32), _offline_settings(lg),
                      tmp_path / "offline", batch=8)
    # one query of 2000/s x 0.2 s x LoadGen's 1.1 margin = 440 samples, queued in chunks of 8: 55 batches
    assert (log["generated_query_count"], log["generated_samples_per_query"]) == (1, 440)
    assert sum(r.batches for r in runners) == 55 and all(r.batches > 0 for r in runners)


def test_a_runner_failing_under_load_is_one_sentence_not_a_hang(tmp_path):
    import mlperf_loadgen as lg
    import numpy as np

    from qexport.core.errors import QExportError
    from qexport.runtimes.loadgen import Instances, run_loadgen

    with pytest.raises(QExportError, match=r"failed while serving LoadGen queries \(kernel exploded\)"):
        run_loadgen(lg, Instances([_CountingRunner(fail=True)]), np.zeros((16, 3, 4, 4), np.float32),
                    _offline_settings(lg, 100.0), tmp_path / "offline", batch=8)


def test_server_search_never_starts_above_what_the_layout_served_offline():
    from qexport.runtimes.loadgen import Expectations, server_capacity

    expect = Expectations(single_ms=2.0, per_sample_ms=1.0, offline_qps=900.0)
    assert server_capacity(expect, 2, None) == 1000.0  # two cores back to back at 2 ms
    assert server_capacity(expect, 2, 600.0) == 600.0  # one instance with two threads served only 600/s


TOO_FEW = "too few queries for the percentile (early stopping needs >= {}): raise the duration (--scenario-seconds)"


@pytest.mark.parametrize("log, scenario, reason", [
    ({"result_min_duration_met": False}, "offline",
     "min duration not met: raise the expected QPS, or the duration (--scenario-seconds)"),
    ({"result_min_duration_met": False, "result_min_queries_met": False}, "single-stream",  # duration named first
     "min duration not met: raise the expected QPS, or the duration (--scenario-seconds)"),
    ({"result_min_queries_met": False}, "single-stream", TOO_FEW.format(64)),
    ({"early_stopping_met": False}, "multi-stream", TOO_FEW.format(662)),
    ({"result_min_queries_met": False}, "server", TOO_FEW.format(500)),
    ({"result_min_duration_met": True, "result_min_queries_met": True}, "server",
     "the p99 bound was exceeded at this QPS: lower the target QPS, or raise --target-latency-ms"),
    ({"result_invalid_reason": "something else"}, "offline", "something else"),
    ({}, "single-stream", "LoadGen marked the run INVALID (see mlperf_log_detail.txt)"),
])
def test_each_invalid_run_says_why_and_what_to_change(log, scenario, reason):
    assert invalid_reason(scenario, {"result_validity": "INVALID", **log}) == reason


def test_a_detail_log_is_read_into_a_result_with_known_figures(tmp_path):
    """A hand-written mlperf_log_detail.txt (the lines LoadGen writes, plus one that is not
    MLLOG): 40411294 ns is 40.411294 ms; an INVALID run carries its reason."""
    from qexport.runtimes.loadgen import result_of

    lines = [':::MLLOG {"key": "result_validity", "value": "INVALID"}',
             ':::MLLOG {"key": "result_min_duration_met", "value": false}',
             ':::MLLOG {"key": "result_samples_per_second", "value": 6095.44}',
             ':::MLLOG {"key": "result_50.00_percentile_latency_ns", "value": 40411294}',
             ':::MLLOG {"key": "result_99.00_percentile_latency_ns", "value": 72185138}',
             ':::MLLOG {"key": "result_query_count", "value": 1}',
             "a line LoadGen did not write as MLLOG"]
    (tmp_path / "mlperf_log_detail.txt").write_text("\n".join(lines) + "\n")
    log = read_detail_log(tmp_path / "mlperf_log_detail.txt")
    assert log == {"result_validity": "INVALID", "result_min_duration_met": False, "result_samples_per_second": 6095.44,
                   "result_50.00_percentile_latency_ns": 40411294, "result_99.00_percentile_latency_ns": 72185138,
                   "result_query_count": 1}
    result = result_of("offline", log, tmp_path)
    assert (result.valid, result.qps, result.queries) == (False, 6095.44, 1)
    assert (result.p50_ms, result.p90_ms, result.p99_ms) == (pytest.approx(40.411294), None, pytest.approx(72.185138))
    assert result.reason == "min duration not met: raise the expected QPS, or the duration (--scenario-seconds)"
    server = result_of("server", {"result_validity": "VALID", "result_completed_samples_per_sec": 180.5,
                                  "result_qps_with_loadgen_overhead": 999.0}, tmp_path)
    assert (server.valid, server.reason, server.qps) == (True, "", 180.5)  # completed, not offered, samples per second


class _FakeLoadGen:
    """Records what the serving threads complete: sample id -> the int32 answer they point to."""

    def __init__(self):
        import threading

        self.answers, self.lock = {}, threading.Lock()

    @staticmethod
    def QuerySampleResponse(sample_id, address, nbytes):  # noqa: N802 -- LoadGen's name
        import ctypes

        assert nbytes == 4
        return sample_id, ctypes.c_int32.from_address(address).value

    def QuerySamplesComplete(self, responses):  # noqa: N802 -- LoadGen's name
        with self.lock:
            self.answers.update(responses)


class _FirstValueRunner:
    """Predicts the class written in each input's first value; records its batch sizes."""

    def __init__(self):
        self.sizes = []

    def predict(self, batch):
        import numpy as np

        self.sizes.append(len(batch))
        return np.eye(10, dtype=np.float32)[batch[:, 0, 0, 0].astype(int)]


def test_served_samples_are_answered_by_index_in_chunks_of_the_batch():
    """20 samples queued in chunks of at most 8 (8, 8, 4) over two instances; sample i (id 100 + i)
    reads input i, whose first value is 3i mod 10 -- the class it must be answered with."""
    from types import SimpleNamespace

    import numpy as np

    from qexport.runtimes.loadgen import ServedRunner

    inputs = np.zeros((20, 3, 1, 1), np.float32)
    inputs[:, 0, 0, 0] = [(3 * i) % 10 for i in range(20)]
    fake, runners = _FakeLoadGen(), [_FirstValueRunner(), _FirstValueRunner()]
    served = ServedRunner(fake, Instances(runners), inputs, batch=8)
    served.issue(SimpleNamespace(id=100 + i, index=i) for i in reversed(range(20)))
    served.stop()
    assert fake.answers == {100 + i: (3 * i) % 10 for i in range(20)} and served.error is None
    assert sorted(runners[0].sizes + runners[1].sizes) == [4, 8, 8]
