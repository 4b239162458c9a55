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
from qexport.runtimes.results import ScenarioSettings  # noqa: E402
from tests.conftest import copy_artifacts  # noqa: E402

QUICK = dict(rounds=1, batch_sizes=(1, 8), min_count=3, min_seconds=0.05, warmup=1)


def test_all_scenarios_run_in_loadgen_and_its_accuracy_matches(built_artifacts, tiny_data, tmp_path):
    out, _ = built_artifacts
    folder = copy_artifacts(out, tmp_path / "a", ["resnet18.fp32.onnx"])
    settings = ScenarioSettings(scenarios=list(SCENARIOS), min_duration_s=0.3, server_steps=2)
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
    assert "## MLPerf LoadGen scenarios" in benchreport.markdown(doc)
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
