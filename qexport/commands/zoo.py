"""The compatibility matrix: which deployment format each architecture survives, and at what cost.

``qexport zoo`` trains each architecture briefly on a small seeded subset, builds every family from
it, measures batch 1 in a few short rounds, and writes one cell per architecture × family:
built (with its int8 drop on held-out images and its latency against that architecture's fastest
fp32 artifact), skipped (why) or failed (the one sentence the build gave). The subsets and rounds
are small so the whole matrix takes minutes per architecture on a 2-core host; the file says so, and its
accuracy figures judge the export, not the architecture.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from qexport.core.documents import to_json
from qexport.core.errors import QExportError
from qexport.core.fsutil import atomic_write_bytes, atomic_write_json
from qexport.core.matrix import MATRIX_JSON, MATRIX_MD, Cell, CellStatus, Matrix, ModelRow, ZooOptions
from qexport.core.progress import say


def check_models(models: tuple[str, ...]) -> None:
    """Every name is checked before the first hour of training, not when its turn comes."""
    if not models:
        raise QExportError("No architectures to build: pass --models, e.g. timm:resnet50,timm:vit_tiny_patch16_224.")
    from qexport.training.models import check_model_name

    for name in models:
        check_model_name(name)


def cells_from_build(model: str, outcomes, rows_by_family: dict) -> list[Cell]:
    """One cell per build outcome; a built family takes its budget from its manifest and its
    speed and accuracy from the bench row (a bench failure makes the cell failed: it does not run)."""
    from qexport.exporter.build import BuildStatus

    cells = []
    for outcome in outcomes:
        if not outcome.produced:
            missed = outcome.over_budget  # refused for its int8 drop: the cell keeps the drop
            cells.append(Cell(model, outcome.family, CellStatus(str(outcome.status)), outcome.reason,
                              "int8" if missed else "", **budget_fields(missed)))
            continue
        cell = built_cell(model, outcome.family, outcome.manifest, rows_by_family.get(outcome.family))
        cells.append(replace(cell, reused=outcome.status == BuildStatus.UP_TO_DATE))
    return cells


def built_cell(model: str, family: str, manifest, row) -> Cell:
    """A built artifact's cell: its budget record, and its batch-1 figures where the bench measured it."""
    from qexport.runtimes.results import RowStatus

    budget = manifest.accuracy_budget if manifest is not None else None
    precision = manifest.precision if manifest is not None else ""
    measured = {}
    if row is not None and row.status is RowStatus.SKIPPED:  # fp16 on a CPU: built, and not meant to run here
        return Cell(model, family, CellStatus.BUILT, f"not measured here: {row.reason}", precision)
    if row is not None and not row.measured:
        return Cell(model, family, CellStatus.FAILED, f"built, but the bench could not run it: {row.reason}", precision)
    if row is not None:
        batch = row.batch("1")
        ratio = row.speedup_vs_best_fp32.get("1")
        measured = dict(top1=row.result.eval.top1 if row.result.eval else None, p50_ms=batch.p50_ms if batch else None,
                        vs_best_fp32=ratio.estimate if ratio else None,
                        vs_best_fp32_low=ratio.low if ratio else None, vs_best_fp32_high=ratio.high if ratio else None)
    drop = budget_fields(budget)
    if budget is not None:
        drop["agreement_with_eager"] = manifest.evaluation.top1_agreement_with_eager
    return Cell(model, family, CellStatus.BUILT, "", precision, **drop, **measured)


def budget_fields(budget) -> dict:
    """A cell's int8 drop and verdict from the budget record (that of a build refused for missing
    it too, so the report can say when the miss itself is noise); none for a float family."""
    if budget is None:
        return {}
    return dict(int8_drop_pt=budget.drop_pt, int8_drop_ci95_pt=budget.drop_ci95_pt, budget_verdict=budget.verdict)


def write_matrix(matrix: Matrix, out_dir: Path) -> list[Path]:
    """compatibility.json (every number) and compatibility.md (the table a team reads)."""
    from qexport.commands.zooreport import markdown

    written = [Path(out_dir) / MATRIX_JSON, Path(out_dir) / MATRIX_MD]
    atomic_write_json(written[0], to_json(matrix))
    atomic_write_bytes(written[1], markdown(matrix).encode())
    return written


def run_zoo(options: ZooOptions, out_dir: Path, data_dir: Path | None, command: str,
            show_progress: bool = True) -> Matrix:
    """Train, build and bench every architecture in turn, rewriting the matrix after each one so an
    interrupted run keeps what it finished."""
    from qexport.core.envinfo import cpu_info, isa_summary, library_versions

    check_models(options.models)
    started = time.time()
    matrix = Matrix(created=time.strftime("%Y-%m-%d", time.gmtime()), command=command,
                    cpu=str(cpu_info().get("model", "")), isa=isa_summary(), libraries=library_versions(),
                    options=options)
    for number, model in enumerate(options.models, 1):
        say(f"[{number}/{len(options.models)}] {model}")
        row, cells = matrix_row(model, options, Path(out_dir), data_dir, show_progress)
        matrix.models.append(row)
        matrix.cells.extend(cells)
        matrix = replace(matrix, seconds=round(time.time() - started, 1))
        write_matrix(matrix, out_dir)
    return matrix


def matrix_row(model: str, options: ZooOptions, out_dir: Path, data_dir: Path | None,
               show_progress: bool) -> tuple[ModelRow, list[Cell]]:
    """One architecture: train, build every family, bench batch 1; a failure of the architecture
    itself (a size it cannot take) is its row's one sentence, and the next architecture goes on."""
    from qexport.commands import pipeline
    from qexport.exporter import BuildOptions, select_families
    from qexport.exporter.build import build_families
    from qexport.training.models import file_stem
    from qexport.runtimes.harness import BenchOptions, bench_directory

    dataset = pipeline.open_data(options.data, data_dir, options.image_size, options.train_samples,
                                 options.test_samples, options.seed)
    size = dataset.image_size[0]
    families = select_families(list(options.families) if options.families else None)
    try:
        dataset = pipeline.training_data(model, dataset, options.preprocessing, options.image_size)
        size = dataset.image_size[0]
        checkpoint = out_dir / "checkpoints" / f"{file_stem(model)}.pt"
        reused = pipeline.checkpoint_is_current(checkpoint, model, dataset, recipe(options)) and \
            pipeline.other_preprocessing(checkpoint, model, options.preprocessing) is None
        if not reused:
            pipeline.train_checkpoint(model, dataset, recipe(options), checkpoint, show_progress=show_progress)
        build_options = BuildOptions(calibration_samples=options.calibration_samples, seed=options.seed,
                                     max_accuracy_drop=options.max_accuracy_drop,
                                     budget_verdict=options.budget_verdict)
        ctx = pipeline.build_context(model, dataset, checkpoint, build_options, show_progress)
    except QExportError as err:
        return failed_row(model, size, str(err), options)
    artifacts = out_dir / file_stem(model)
    outcomes = build_families(ctx, families, artifacts, jobs=options.jobs)
    bench = BenchOptions(rounds=options.rounds, batch_sizes=(1,), min_seconds=options.min_seconds, warmup=3)
    doc = bench_directory(artifacts, bench, dataset, seed=options.seed, progress=say_round) if any(
        o.produced for o in outcomes) else None
    rows = {row.family: row for row in doc.rows} if doc else {}
    if doc:  # bench.json and bench.md beside the artifacts: every cell's numbers, in full
        from qexport.commands.benchreport import write_outputs

        write_outputs(doc, artifacts)
    row = ModelRow(model, size, read_fp32_top1(checkpoint), best_fp32=doc.best_fp32.get("1", "") if doc else "",
                   reused_checkpoint=reused, preprocessing=ctx.data.preprocessing.describe())
    return row, cells_from_build(model, outcomes, rows)


def failed_row(model: str, size: int, reason: str, options: ZooOptions) -> tuple[ModelRow, list[Cell]]:
    """An architecture that produced nothing: its row and every asked family's cell say why."""
    from qexport.exporter import select_families

    families = select_families(list(options.families) if options.families else None)
    return ModelRow(model, size, problem=reason), [Cell(model, f.key, CellStatus.FAILED, reason) for f in families]


def say_round(number: int, total: int, row, round_index: int, rounds: int) -> None:
    """The bench's progress, one line per worker, as `qexport bench` prints it."""
    say(f"bench round {round_index + 1}/{rounds} [{number + 1}/{total}] {row.file}")


def recipe(options: ZooOptions):
    """The short training every architecture gets (the one-cycle schedule's defaults otherwise)."""
    from qexport.training.recipe import TrainConfig

    return TrainConfig(epochs=options.epochs, batch_size=64, seed=options.seed)


def read_fp32_top1(checkpoint: Path) -> float | None:
    from qexport.training.models import read_checkpoint

    return read_checkpoint(checkpoint).get("meta", {}).get("test_top1")
