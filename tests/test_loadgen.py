"""`qexport bench --scenario`: the real MLPerf LoadGen drives an artifact under all four scenarios;
every figure comes from LoadGen's own logs (kept), INVALID runs carry LoadGen's reason and the fix,
and LoadGen's accuracy mode agrees with bench's own top-1. No timing is asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("mlperf_loadgen", reason="mlcommons-loadgen is not installed: pip install 'qexport[loadgen]'")

from qexport import benchreport  # noqa: E402
from qexport.runtimes.harness import BenchOptions, bench_directory  # noqa: E402
from qexport.runtimes.loadgen import MIN_QUERIES, SCENARIOS  # noqa: E402
from qexport.runtimes.results import usable_cores  # noqa: E402
from qexport.runtimes.results import ScenarioSettings  # noqa: E402
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
        assert result.valid or result.reason
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

    from qexport.runtimes.loadgen import Layout, pin_this_thread

    per_core, shared = Layout("per-core", (0, 1)), Layout("threads", (0, 1))
    assert (per_core.instances, per_core.threads_each) == (2, 1) and (shared.instances, shared.threads_each) == (1, 2)
    loaded = per_core.load(lambda threads: f"instance with {threads} thread")
    assert loaded.runners == ["instance with 1 thread"] * 2 and loaded.pins == [[0], [1]]
    assert shared.load(lambda threads: threads).pins == [[0, 1]]
    core = usable_cores()[-1]
    seen = []
    thread = threading.Thread(target=lambda: (pin_this_thread([core]), seen.append(os.sched_getaffinity(0))))
    thread.start()
    thread.join()
    assert seen == [{core}] and len(os.sched_getaffinity(0)) == len(usable_cores())  # only that thread moved
