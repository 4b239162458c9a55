"""`qexport zoo --ray ADDRESS`: the compatibility matrix with one Ray task per architecture.

Each task reserves ``--cpus-per-task`` CPUs of one node and does there what the single-host zoo
does for that architecture (train, build every family, bench batch 1), so a node with exactly that
many CPUs times with nothing else beside it. Every node reads and writes the same ``--out`` folder
(a shared filesystem; checked at the start): checkpoints and up-to-date artifacts are reused as on
one host, and bench checks each artifact's sha256 against its manifest before timing it.

compatibility.json is rewritten as each architecture finishes, with the node, CPU class and
versions it was measured on. A task whose node is lost is retried by Ray on another node; one that
still fails leaves its row failed with the reason. A rerun with the same options keeps the finished
rows and runs only the rest.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import replace
from pathlib import Path

from qexport.commands.cluster import ClusterError, ClusterNode, import_ray
from qexport.commands.zoo import check_models, write_matrix
from qexport.core.matrix import MATRIX_JSON, Cell, ClusterOptions, Matrix, ModelRow, ZooOptions, read_matrix
from qexport.core.progress import say

NODE_RETRIES = 2  # Ray reruns a task whose worker or node died this many times, elsewhere if it must


def architecture_task(model: str, options: ZooOptions, out_dir: str, data_dir: str | None) -> tuple[ModelRow, list[Cell]]:
    """One architecture on the node Ray chose: the single-host zoo's row, and where it was made."""
    from qexport.commands.cluster import measured_here
    from qexport.commands.zoo import matrix_row

    row, cells = matrix_row(model, options, Path(out_dir), Path(data_dir) if data_dir else None, show_progress=False)
    return replace(row, measured_on=measured_here()), cells


def sees_token(path: str, token: str) -> bool:
    """On a node: whether the driver's token file is there with its content (a shared folder)."""
    try:
        return Path(path).read_text() == token
    except OSError:
        return False


def check_shared(out_dir: Path, nodes: list[ClusterNode]) -> None:
    """Every node must see --out: checkpoints and artifacts are written there by whichever node."""
    from qexport.commands.cluster import on_every_node

    out_dir.mkdir(parents=True, exist_ok=True)
    token_file, token = out_dir / f".qexport-shared-{uuid.uuid4().hex}", uuid.uuid4().hex
    token_file.write_text(token)
    try:
        seen = on_every_node(sees_token, [n.node_id for n in nodes], str(token_file.resolve()), token)
    finally:
        token_file.unlink(missing_ok=True)
    blind = [n.address for n, ok in zip(nodes, seen) if not ok]
    if blind:
        raise ClusterError(f"--out {out_dir} is not visible from node(s) {', '.join(blind)}: give every node the same "
                           "shared folder (e.g. an NFS mount at the same path) and pass it as --out.")


def earlier_matrix(out_dir: Path, options: ZooOptions) -> Matrix | None:
    """The matrix an earlier run with the same options left, to resume from; other options: none."""
    path = out_dir / MATRIX_JSON
    if not path.is_file():
        return None
    earlier = read_matrix(path)
    return earlier if replace(earlier.options, models=()) == replace(options, models=()) else None


def kept_rows(earlier: Matrix | None, models: tuple[str, ...]) -> tuple[list[ModelRow], list[Cell]]:
    """The finished architectures of an earlier run (a row without a problem), in the asked order."""
    if earlier is None:
        return [], []
    rows = [r for r in earlier.models if r.model in models and not r.problem]
    done = {r.model for r in rows}
    return rows, [c for c in earlier.cells if c.model in done]


def with_row(matrix: Matrix, row: ModelRow, cells: list[Cell]) -> Matrix:
    """The matrix with one more architecture, rows kept in the order the options list them."""
    order = {model: i for i, model in enumerate(matrix.options.models)}
    models = sorted([*(r for r in matrix.models if r.model != row.model), row], key=lambda r: order.get(r.model, 0))
    kept = [c for c in matrix.cells if c.model != row.model]
    return replace(matrix, models=models, cells=sorted([*kept, *cells], key=lambda c: order.get(c.model, 0)))


def lost_row(model: str, options: ZooOptions, err: Exception) -> tuple[ModelRow, list[Cell]]:
    """A task that failed even after Ray's retries: its row and cells say why; a rerun redoes it."""
    from qexport.commands.zoo import failed_row

    reason = f"its task failed on the cluster ({type(err).__name__}: {str(err).splitlines()[0][:200]}); rerun to complete it"
    return failed_row(model, 0, reason, options)


def run_zoo_ray(options: ZooOptions, cluster: ClusterOptions, out_dir: Path, data_dir: Path | None,
                command: str) -> Matrix:
    """Submit every architecture not yet done, and write the matrix as each one comes back."""
    from qexport.commands.cluster import cluster_nodes, connect
    from qexport.core.envinfo import library_versions

    check_models(options.models)
    connect(cluster.address)
    ray = import_ray()
    nodes = cluster_nodes()
    check_shared(out_dir, nodes)
    if not any(n.cpus >= cluster.cpus_per_task for n in nodes):
        raise ClusterError(f"No node has the {cluster.cpus_per_task} CPUs --cpus-per-task asks for (the most is "
                           f"{max(n.cpus for n in nodes)}); lower --cpus-per-task.")
    say(f"cluster: {len(nodes)} node(s), classes: {'; '.join(sorted({n.cpu_class for n in nodes}))}")
    started = time.time()
    rows, cells = kept_rows(earlier_matrix(out_dir, options), options.models)
    matrix = Matrix(created=time.strftime("%Y-%m-%d", time.gmtime()), command=command, cpu="(per row: measured_on)",
                    isa=[], libraries=library_versions(), options=options, models=rows, cells=cells)
    if rows:
        say(f"kept {len(rows)} finished architecture(s) from the earlier run: {', '.join(r.model for r in rows)}")
    task = ray.remote(num_cpus=cluster.cpus_per_task, max_retries=NODE_RETRIES)(architecture_task)
    todo = [m for m in options.models if m not in {r.model for r in rows}]
    pending = {task.remote(m, options, str(out_dir.resolve()), str(data_dir) if data_dir else None): m for m in todo}
    say(f"submitted {len(todo)} architecture(s), {cluster.cpus_per_task} CPUs each; compatibility.md is rewritten "
        "as each one finishes")
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        model = pending.pop(ready[0])
        try:
            row, row_cells = ray.get(ready[0])
        except Exception as err:  # a RayError after the retries: the row says why, the others go on
            row, row_cells = lost_row(model, options, getattr(err, "cause", None) or err)
        where = f" on {row.measured_on.node[:12]} ({row.measured_on.cpu_class})" if row.measured_on else ""
        say(f"[{len(todo) - len(pending)}/{len(todo)}] {model}{where}: {row.problem or f'{len(row_cells)} cells'}")
        matrix = replace(with_row(matrix, row, row_cells), seconds=round(time.time() - started, 1))
        write_matrix(matrix, out_dir)
    return matrix
