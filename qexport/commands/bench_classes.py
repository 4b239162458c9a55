"""`qexport bench DIR --ray ADDRESS --per-cpu-class`: the same artifacts measured on one node of
each CPU class of a Ray cluster, one section per class and a table across them.

The folder travels once through Ray's object store with each file's sha256 and is checked on
arrival (:func:`qexport.commands.cluster.unpack_bundle`). Each class's bench is one task that
reserves all the CPUs of its node and runs the single-host bench there unchanged (fresh pinned
workers, interleaved rounds, paired intervals). The cross-class table names the artifact to ship
per class and batch size by the recommendation's own rule (its equals included), and says where
the choice differs between classes.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from qexport.commands.cluster import ClusterNode, class_slug
from qexport.core.matrix import MeasuredOn
from qexport.core.documents import parse, to_json
from qexport.core.errors import QExportError
from qexport.core.fsutil import atomic_write_bytes, atomic_write_json
from qexport.runtimes.bench_options import BenchOptions
from qexport.runtimes.results import BenchDocument

CLASSES_MD = "bench-classes.md"
CLASSES_JSON = "bench-classes.json"


@dataclass(frozen=True)
class ClassBench:
    """One CPU class's bench: where it ran, and the document the single-host bench wrote there."""

    cpu_class: str
    measured_on: MeasuredOn
    folder: str  # relative to the output folder: classes/<slug>
    doc: BenchDocument


@dataclass(frozen=True)
class Leader:
    """The artifact to ship at one batch size on one class, and those it cannot be told from."""

    cpu_class: str
    batch: str
    family: str | None
    equals: tuple[str, ...] = ()
    shown: str = ""

    @property
    def group(self) -> set[str]:
        return {self.family, *self.equals} if self.family else set()


@dataclass(frozen=True)
class PerClassRequest:
    """What each node's task needs to bench the folder as the driver was asked."""

    options: BenchOptions
    data: str | None
    data_dir: str | None
    no_accuracy: bool
    seed: int
    command: str     # the driver's command line, recorded in each class's bench.json
    directory: str   # the folder as the driver named it (each node benches its own copy)


def bench_on_this_node(bundle, request: PerClassRequest) -> tuple[dict, MeasuredOn]:
    """The task body: unpack and check the folder, bench it as `qexport bench` would, return bench.json."""
    from qexport.commands.cluster import measured_here, unpack_bundle
    from qexport.core.index import discover
    from qexport.runtimes.evaluation_set import evaluation_data
    from qexport.runtimes.harness import bench_directory

    with tempfile.TemporaryDirectory(prefix="qexport-ray-bench-") as tmp:
        folder = unpack_bundle(bundle, Path(tmp) / "artifacts")
        entries = discover(folder)
        dataset = None if request.no_accuracy else evaluation_data(entries, request.data,
                                                                    Path(request.data_dir) if request.data_dir else None)
        doc = bench_directory(folder, request.options, dataset, seed=request.seed, entries=entries)
    doc = replace(doc, command=request.command, directory=request.directory)
    return doc.to_dict(), measured_here()


def run_per_class(directory: Path, request: PerClassRequest, nodes: dict[str, ClusterNode], say) -> list[ClassBench]:
    """Send the folder once, bench it on one node per class at the same time, gather the documents."""
    from qexport.commands.cluster import bundle_folder, import_ray, on_node

    ray = import_ray()
    bundle = ray.put(bundle_folder(directory))
    task = ray.remote(max_retries=0)(bench_on_this_node)
    pending = {}
    for cpu_class, node in nodes.items():
        say(f"benching on {node.address} ({node.cpus} CPUs) for class {cpu_class}")
        pending[cpu_class] = task.options(**on_node(node)).remote(bundle, request)
    results = []
    for cpu_class, ref in pending.items():
        data, measured_on = task_result(ref, f"the bench on class {cpu_class} ({nodes[cpu_class].address})")
        doc = parse(BenchDocument, data, f"the bench on class {cpu_class}")
        results.append(ClassBench(cpu_class, measured_on, f"classes/{class_slug(cpu_class)}", doc))
    return results


def task_result(ref, what: str):
    """A task's value, or one sentence: its own QExportError as it said it, anything else by type."""
    from qexport.commands.cluster import ClusterError, import_ray

    ray = import_ray()
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:
        cause = getattr(err, "cause", None) or err
        said = str(cause) if isinstance(cause, QExportError) else f"{type(cause).__name__}: {str(cause).splitlines()[0]}"
        raise ClusterError(f"{what} failed: {said}") from None


def leaders(bench: ClassBench, manifests: dict) -> list[Leader]:
    """Per batch size, the recommendation's latency pick on this class."""
    from qexport.commands.recommend import format_interval, recommend

    picks, _ = recommend(bench.doc, manifests, only=tuple(f"latency@{b}" for b in bench.doc.batch_keys))
    return [Leader(bench.cpu_class, p.target.split("@", 1)[1], p.family, tuple(p.equals),
                   format_interval(p.value, p.unit) if p.value else "") for p in picks]


def ranking_changes(by_class: list[list[Leader]]) -> list[str]:
    """For each batch size, the pairs of classes whose choices exclude each other: what one class
    ships is not even among the other's equals."""
    lines = []
    flat = [leader for leaders_of_class in by_class for leader in leaders_of_class]
    for batch in dict.fromkeys(leader.batch for leader in flat):
        at_batch = [leader for leader in flat if leader.batch == batch and leader.family]
        for i, first in enumerate(at_batch):
            for second in at_batch[i + 1:]:
                if first.family not in second.group and second.family not in first.group:
                    lines.append(f"batch {batch}: {first.cpu_class} ships {first.family}, {second.cpu_class} ships "
                                 f"{second.family}; neither is among the other's equals")
    return lines


def cross_class_lines(benches: list[ClassBench], manifests: dict) -> list[str]:
    """The table a fleet with several CPU classes reads first, then where the choice changes."""
    by_class = [leaders(bench, manifests) for bench in benches]
    lines = ["| CPU class | node | batch | ship | p50 ms [95 % CI] | cannot be told apart from |",
             "|---|---|---:|---|---:|---|"]
    for bench, leaders_of_class in zip(benches, by_class):
        for leader in leaders_of_class:
            lines.append(f"| {bench.cpu_class} | {bench.measured_on.node[:12]} | {leader.batch} | "
                         f"{leader.family or 'nothing qualifies'} | {leader.shown} | {', '.join(leader.equals)} |")
    changes = ranking_changes(by_class)
    lines += ["", "Where the choice changes between classes:" if changes else
              "The choice is the same on every class (or within each other's equals)."]
    lines += [f"- {line}" for line in changes]
    return lines


def class_section(bench: ClassBench) -> list[str]:
    where = bench.measured_on
    return [f"## {bench.cpu_class}", "",
            f"Node {where.node}, CPU {where.cpu}; full report in `{bench.folder}/bench.md`.", ""]


def demoted(text: str) -> list[str]:
    """A class's bench.md, its headings two levels down, to sit under that class's heading."""
    return ["##" + line if line.startswith("#") else line for line in text.splitlines()]


def write_per_class(benches: list[ClassBench], out_dir: Path, manifests: dict) -> list[Path]:
    """Each class's bench.json, bench.md and plots in classes/<slug>/, then bench-classes.md/json."""
    from qexport.commands.benchreport import markdown, write_outputs

    written = []
    for bench in benches:
        written += write_outputs(bench.doc, out_dir / bench.folder, manifests)
    lines = ["# Bench per CPU class", "", *cross_class_lines(benches, manifests), ""]
    for bench in benches:
        lines += class_section(bench) + demoted(markdown(bench.doc)) + [""]
    atomic_write_bytes(out_dir / CLASSES_MD, "\n".join(lines).encode())
    atomic_write_json(out_dir / CLASSES_JSON, [to_json(b) for b in benches])
    return written + [out_dir / CLASSES_MD, out_dir / CLASSES_JSON]
