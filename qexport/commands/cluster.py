"""A Ray cluster as qexport sees it: connecting in one sentence, each node's CPU class, one task
that has a node to itself, and artifact folders that travel with their checksums.

Ray is the optional ``[ray]`` extra and is imported only here and in the tasks it runs. A node's
CPU class is the ISA line `qexport info` prints (``HostCpu.isa_line``), probed on that node; a
node started with the label ``qexport-cpu-class=<name>`` (``ray start --labels``) is grouped under
that name instead, so an operator can split a fleet by hand.

Timing honesty: every task that measures reserves all of its node's CPUs (``num_cpus``), so Ray
schedules nothing else there while it times; inside it, the bench pins one core as it does on a
single host.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

from qexport.core.errors import QExportError
from qexport.core.matrix import MeasuredOn

CLASS_LABEL = "qexport-cpu-class"
RAY_MISSING = "Ray is not installed here: `pip install 'qexport[ray]'` adds it (without --ray nothing needs it)."


class ClusterError(QExportError):
    """No cluster, no such class, an artifact changed in transit: one sentence, exit 2."""


@dataclass(frozen=True)
class ClusterNode:
    """One alive node: where it is, what it has, and the class its timings are reported under."""

    node_id: str
    address: str
    cpus: int
    cpu_class: str
    cpu: str = ""         # the model name its /proc/cpuinfo gives
    labelled: bool = False  # the class came from the node's qexport-cpu-class label, not the probe


def import_ray():
    """Ray, or the one sentence that says how to get it."""
    try:
        import ray
    except ImportError:
        raise ClusterError(RAY_MISSING) from None
    return ray


def host_and_port(address: str) -> tuple[str, int] | None:
    """'10.0.0.5:6379' → ('10.0.0.5', 6379); 'auto' and 'ray://…' are left to Ray."""
    if address == "auto" or "://" in address:
        return None
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--ray {address!r} is not an address: give HOST:PORT of the head node "
                           "(as `ray start --head` prints it) or auto on a node of the cluster.")
    return host, int(port)


def nothing_listens(address: str, timeout_s: float = 3.0) -> bool:
    """A refused or silent port is told in seconds; Ray itself retries a dead address for minutes."""
    target = host_and_port(address)
    if target is None:
        return False
    try:
        with socket.create_connection(target, timeout=timeout_s):
            return False
    except OSError:
        return True


def no_cluster_sentence(address: str) -> str:
    return (f"No Ray cluster answers at {address}: start one with `ray start --head` on the head node "
            "(and `ray start --address HEAD:6379` on the others), then pass the address it prints.")


def connect(address: str) -> None:
    """Join the cluster at ``address`` as a driver, quietly; one sentence when nothing is there."""
    ray = import_ray()
    if ray.is_initialized():
        return
    if nothing_listens(address):
        raise ClusterError(no_cluster_sentence(address))
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONWARNINGS": "ignore"}})
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ClusterError(no_cluster_sentence(address) + f" ({str(err).splitlines()[0]})") from None


def describe_this_host() -> tuple[str, str]:
    """(ISA line, CPU model) of the machine this runs on: what a node reports of itself."""
    from qexport.core.hardware import host_cpu

    cpu = host_cpu()
    return cpu.isa_line(), cpu.model


def measured_here() -> MeasuredOn:
    """The node this task runs on, as a result records it: its class as :func:`cluster_nodes` groups it."""
    import ray

    from qexport.core.envinfo import library_versions

    context = ray.get_runtime_context()
    isa, cpu = describe_this_host()
    label = (context.get_node_labels() or {}).get(CLASS_LABEL)
    return MeasuredOn(node=context.get_node_id(), cpu_class=label or isa, cpu=cpu, libraries=library_versions())


def pinned_to(node_id: str):
    """The scheduling strategy that runs a task on that node and nowhere else."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id, soft=False)


def on_node(node: ClusterNode) -> dict:
    """Task options that place it on ``node`` and reserve all its CPUs: nothing else runs there."""
    return dict(num_cpus=node.cpus, scheduling_strategy=pinned_to(node.node_id))


def on_every_node(function, node_ids: list[str], *args) -> list:
    """``function(*args)`` once on each node, taking no CPU (a probe of the node itself), in order."""
    ray = import_ray()
    probe = ray.remote(num_cpus=0)(function)
    return ray.get([probe.options(scheduling_strategy=pinned_to(node_id)).remote(*args) for node_id in node_ids])


def cluster_nodes() -> list[ClusterNode]:
    """Every alive node with a CPU, its class probed on it (or taken from its label)."""
    ray = import_ray()
    alive = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
    facts = on_every_node(describe_this_host, [n["NodeID"] for n in alive])
    nodes = []
    for raw, (isa, cpu) in zip(alive, facts):
        label = (raw.get("Labels") or {}).get(CLASS_LABEL)
        nodes.append(ClusterNode(node_id=raw["NodeID"], address=raw.get("NodeManagerAddress", ""),
                                 cpus=int(raw["Resources"]["CPU"]), cpu_class=label or isa, cpu=cpu,
                                 labelled=bool(label)))
    return nodes


def by_class(nodes: list[ClusterNode]) -> dict[str, list[ClusterNode]]:
    """Nodes grouped by CPU class, classes in the order their first node appears."""
    groups: dict[str, list[ClusterNode]] = {}
    for node in nodes:
        groups.setdefault(node.cpu_class, []).append(node)
    return groups


def chosen_classes(groups: dict[str, list[ClusterNode]], wanted: tuple[str, ...] | None) -> dict[str, ClusterNode]:
    """One node per class (the one with most CPUs); a wanted class no node has is named."""
    missing = [name for name in wanted or () if name not in groups]
    if missing:
        raise ClusterError(f"No node of the cluster has CPU class {', '.join(repr(m) for m in missing)}; "
                           f"its classes are: {'; '.join(repr(c) for c in groups)}.")
    names = list(wanted) if wanted else list(groups)
    return {name: max(groups[name], key=lambda n: n.cpus) for name in names}


def class_slug(cpu_class: str) -> str:
    """A folder name for a class: 'AVX2, AVX-512F' → 'avx2-avx-512f'."""
    slug = "".join(ch if ch.isalnum() else "-" for ch in cpu_class.lower())
    return "-".join(part for part in slug.split("-") if part) or "unknown"


@dataclass(frozen=True)
class FolderBundle:
    """An artifact folder's files as bytes, each with the sha256 it had when it left."""

    files: dict[str, bytes]
    sha256: dict[str, str]


def bundle_folder(directory: Path) -> FolderBundle:
    """Every file directly in ``directory`` (manifests, artifacts, companions, golden data)."""
    from qexport.core.fsutil import sha256_file

    paths = sorted(p for p in Path(directory).iterdir() if p.is_file())
    return FolderBundle(files={p.name: p.read_bytes() for p in paths}, sha256={p.name: sha256_file(p) for p in paths})


def unpack_bundle(bundle: FolderBundle, target: Path) -> Path:
    """Write the files and check each one's sha256 on arrival: a file that changed is refused, named."""
    import hashlib

    target.mkdir(parents=True, exist_ok=True)
    for name, data in bundle.files.items():
        arrived = hashlib.sha256(data).hexdigest()
        if arrived != bundle.sha256.get(name):
            raise ClusterError(f"{name} changed in transit (sha256 {arrived[:12]}… on arrival, "
                               f"{str(bundle.sha256.get(name))[:12]}… when sent): refused; send the folder again.")
        (target / name).write_bytes(data)
    return target
