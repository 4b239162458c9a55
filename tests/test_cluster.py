"""Ray: the pure parts with hand-made inputs (addresses, checksums, classes, resuming, where the choice
changes), then a real local cluster of two nodes, one labelled as a second CPU class (no mocks of Ray)."""

from __future__ import annotations

import socket
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from qexport.commands.bench_classes import Leader, ranking_changes
from qexport.commands.cluster import (CLASS_LABEL, ClusterError, ClusterNode, FolderBundle, bundle_folder,
                                      chosen_classes, class_slug, host_and_port, nothing_listens, unpack_bundle)
from qexport.commands.zoo_ray import earlier_matrix, kept_rows, with_row
from qexport.core.matrix import Cell, CellStatus, Matrix, ModelRow, ZooOptions
from tests.conftest import copy_artifacts, run_cli


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def node(node_id: str, cpu_class: str, cpus: int = 2) -> ClusterNode:
    return ClusterNode(node_id=node_id, address=f"10.0.0.{node_id}", cpus=cpus, cpu_class=cpu_class)


def test_an_address_without_a_port_is_refused_in_one_sentence():
    with pytest.raises(ClusterError, match="is not an address: give HOST:PORT"):
        host_and_port("headnode")
    assert host_and_port("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert host_and_port("auto") is None


def test_a_port_nobody_listens_on_is_told_without_waiting_for_ray():
    assert nothing_listens(f"127.0.0.1:{free_port()}")
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert not nothing_listens(f"127.0.0.1:{server.getsockname()[1]}")


def test_a_file_that_changed_in_transit_is_refused_and_named(tmp_path):
    (tmp_path / "a.onnx").write_bytes(b"weights")
    (tmp_path / "a.onnx.manifest.json").write_text("{}")
    bundle = bundle_folder(tmp_path)
    tampered = FolderBundle(files={**bundle.files, "a.onnx": b"weightz"}, sha256=bundle.sha256)
    with pytest.raises(ClusterError, match=r"a\.onnx changed in transit .*refused"):
        unpack_bundle(tampered, tmp_path / "arrived")
    arrived = unpack_bundle(bundle, tmp_path / "ok")
    assert (arrived / "a.onnx").read_bytes() == b"weights"


def test_one_node_per_class_the_largest_and_a_class_no_node_has_is_named():
    groups = {"AVX2": [node("1", "AVX2", 2), node("2", "AVX2", 8)], "AMX": [node("3", "AMX", 4)]}
    chosen = chosen_classes(groups, None)
    assert [n.node_id for n in chosen.values()] == ["2", "3"]
    assert list(chosen_classes(groups, ("AMX",))) == ["AMX"]
    with pytest.raises(ClusterError, match=r"No node of the cluster has CPU class 'AVX-512'; its classes are: 'AVX2'; 'AMX'"):
        chosen_classes(groups, ("AVX-512",))


@pytest.mark.parametrize("flags, line", [
    ("avx2 fma", "AVX2"),
    ("avx2 avx512f avx512_vnni", "AVX2, AVX-512F, AVX-512 VNNI"),
])
def test_a_node_reports_the_class_its_cpu_flags_give(monkeypatch, flags, line):
    from qexport.commands.cluster import describe_this_host
    from qexport.core.hardware import FAKE_FLAGS_VARIABLE

    monkeypatch.setenv(FAKE_FLAGS_VARIABLE, flags)  # decided from the flags, whatever this host has
    assert describe_this_host()[0] == line


def test_a_class_becomes_a_folder_name():
    assert class_slug("AVX2, AVX-512F, AVX-512 VNNI") == "avx2-avx-512f-avx-512-vnni"


@pytest.mark.parametrize("second, equals_of_first, changes", [
    ("onnx-int8", (), 0),                 # the same choice
    ("ipex-int8", ("ipex-int8",), 0),     # another choice, but among the first's equals
    ("ipex-int8", (), 1),                 # neither is among the other's equals: the ranking changes
])
def test_the_ranking_changes_only_when_neither_choice_is_among_the_others_equals(second, equals_of_first, changes):
    first = [Leader("AVX2", "1", "onnx-int8", equals_of_first)]
    other = [Leader("AMX", "1", second, ())]
    lines = ranking_changes([first, other])
    assert len(lines) == changes
    if changes:
        assert lines[0] == "batch 1: AVX2 ships onnx-int8, AMX ships ipex-int8; neither is among the other's equals"


def test_the_ranking_is_compared_per_batch_size():
    first = [Leader("AVX2", "1", "onnx-int8"), Leader("AVX2", "32", "openvino-int8")]
    other = [Leader("AMX", "1", "onnx-int8"), Leader("AMX", "32", "ipex-int8")]
    assert [line.split(":")[0] for line in ranking_changes([first, other])] == ["batch 32"]


def matrix_with(rows: list[ModelRow], options: ZooOptions) -> Matrix:
    cells = [Cell(r.model, "onnx-fp32", CellStatus.FAILED if r.problem else CellStatus.BUILT) for r in rows]
    return Matrix("2026-12-05", "qexport zoo", "cpu", [], {}, options, models=rows, cells=cells)


def test_a_rerun_keeps_finished_rows_and_redoes_a_lost_one():
    options = ZooOptions(models=("a", "b", "c"))
    earlier = matrix_with([ModelRow("a", 32), ModelRow("b", 0, problem="its task failed on the cluster")], options)
    rows, cells = kept_rows(earlier, options.models)
    assert [r.model for r in rows] == ["a"]
    assert [c.model for c in cells] == ["a"]


def test_an_earlier_matrix_with_other_options_is_not_resumed(tmp_path):
    from qexport.commands.zoo import write_matrix

    options = ZooOptions(models=("a",))
    write_matrix(matrix_with([ModelRow("a", 32)], options), tmp_path)
    assert earlier_matrix(tmp_path, replace(options, models=("a", "b"))) is not None  # more models: resumed
    assert earlier_matrix(tmp_path, replace(options, epochs=options.epochs + 1)) is None


def test_rows_are_kept_in_the_order_the_options_list_them_whatever_order_they_finish():
    options = ZooOptions(models=("a", "b", "c"))
    matrix = matrix_with([], options)
    for model in ("c", "a", "b"):
        matrix = with_row(matrix, ModelRow(model, 32), [Cell(model, "onnx-fp32", CellStatus.BUILT)])
    assert [r.model for r in matrix.models] == ["a", "b", "c"]
    assert [c.model for c in matrix.cells] == ["a", "b", "c"]


def test_without_the_extra_ray_is_one_sentence_naming_the_install(monkeypatch):
    from qexport.commands.cluster import RAY_MISSING, import_ray

    monkeypatch.setitem(__import__("sys").modules, "ray", None)  # how Python behaves when ray is not installed
    with pytest.raises(ClusterError) as err:
        import_ray()
    assert str(err.value) == RAY_MISSING and "pip install 'qexport[ray]'" in RAY_MISSING


def test_bench_on_a_cluster_needs_both_flags():
    result = run_cli("bench", "artifacts", "--per-cpu-class")
    assert result.returncode == 2
    assert "pass both --ray ADDRESS and --per-cpu-class" in result.stderr


def test_an_address_with_no_cluster_is_one_sentence_and_exit_2(tmp_path):
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    address = f"127.0.0.1:{free_port()}"
    result = run_cli("zoo", "--ray", address, "--models", "resnet18", "-o", str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip() == (f"qexport: error: No Ray cluster answers at {address}: start one with `ray start "
                                     "--head` on the head node (and `ray start --address HEAD:6379` on the others), "
                                     "then pass the address it prints.")


# -- a real cluster: two nodes on this machine, the second labelled as another CPU class -------------

SECOND_CLASS = "second-class"


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
    from ray.cluster_utils import Cluster

    local = Cluster(initialize_head=True, head_node_args=dict(num_cpus=1))
    worker = local.add_node(num_cpus=1, labels={CLASS_LABEL: SECOND_CLASS})
    ray.init(address=local.address, logging_level="ERROR", log_to_driver=False)
    yield local, worker
    ray.shutdown()
    local.shutdown()


@pytest.mark.e2e
def test_bench_per_class_writes_a_section_per_class_and_the_cross_class_table(cluster, built_artifacts, tmp_path):
    local, _ = cluster
    folder = copy_artifacts(built_artifacts[0], tmp_path / "a", ["resnet18.fp32.onnx", "resnet18.int8.onnx"])
    result = run_cli("bench", str(folder), "--ray", local.address, "--per-cpu-class", "--rounds", "2",
                     "--batch-sizes", "1", "--min-seconds", "0.05", "--no-accuracy")
    assert result.returncode == 0, result.stderr
    text = (folder / "bench-classes.md").read_text()
    table = text.split("\n## ")[0]  # the cross-class table comes before the first class's section
    classes = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ") and "| 1 |" in line]
    assert len(classes) == 2 and SECOND_CLASS in classes
    assert f"## {SECOND_CLASS}" in text
    for cpu_class in classes:
        assert (folder / "classes" / class_slug(cpu_class) / "bench.json").is_file()


@pytest.mark.e2e
def test_a_class_no_node_has_is_named(cluster, built_artifacts, tmp_path):
    local, _ = cluster
    folder = copy_artifacts(built_artifacts[0], tmp_path / "a", ["resnet18.fp32.onnx"])
    result = run_cli("bench", str(folder), "--ray", local.address, "--per-cpu-class", "--cpu-class", "AMX-only")
    assert result.returncode == 2
    assert "No node of the cluster has CPU class 'AMX-only'" in result.stderr and SECOND_CLASS in result.stderr


ZOO = ZooOptions(models=("resnet18", "mobilenet_v3_small"), families=("onnx-fp32",), data="synthetic",
                 image_size=32, train_samples=64, test_samples=32, epochs=1, calibration_samples=16, rounds=2,
                 min_seconds=0.05, jobs=1)


@pytest.mark.e2e
def test_a_zoo_on_the_cluster_survives_a_lost_node_and_matches_the_single_host_cells(cluster, tmp_path):
    from qexport.commands.zoo import run_zoo
    from qexport.commands.zoo_ray import run_zoo_ray
    from qexport.core.matrix import ClusterOptions

    local, worker = cluster
    options = ClusterOptions(address=local.address, cpus_per_task=1)
    lose_the_worker = threading.Timer(12.0, local.remove_node, args=(worker,))
    lose_the_worker.start()
    try:
        on_cluster = run_zoo_ray(ZOO, options, tmp_path / "ray", None, "qexport zoo --ray")
    finally:
        lose_the_worker.cancel()
    assert [r.model for r in on_cluster.models] == list(ZOO.models)
    assert not [r.problem for r in on_cluster.models if r.problem]
    # the task that was on the lost node ran again on the head: every row was measured there
    assert {r.measured_on.node for r in on_cluster.models} == {local.head_node.node_id}

    here = run_zoo(ZOO, tmp_path / "here", None, "qexport zoo", show_progress=False)
    assert {(c.model, c.family, c.status) for c in on_cluster.cells} == {(c.model, c.family, c.status) for c in here.cells}

    # a rerun keeps every finished row as it was (a re-measured bench would give other p50s)
    again = run_zoo_ray(ZOO, options, tmp_path / "ray", None, "qexport zoo --ray")
    assert again.models == on_cluster.models and again.cells == on_cluster.cells
    assert Path(tmp_path / "ray" / "compatibility.md").is_file()
