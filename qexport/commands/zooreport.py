"""Render the compatibility matrix as compatibility.md: one row per architecture, one column per
family, every cell short, and every skip or failure explained once in a numbered note."""

from __future__ import annotations

import re

from qexport.core.matrix import Cell, CellStatus, Matrix

BUILT, SKIPPED, FAILED = CellStatus.BUILT, CellStatus.SKIPPED, CellStatus.FAILED
MEANINGFUL_TOP1 = 0.40  # below it (on 10 classes, 10 % is chance) an int8 drop or agreement is mostly noise
NOT_MEANINGFUL = (f"the fp32 model is below {MEANINGFUL_TOP1 * 100:.0f} % top-1: its int8 drop and agreement are noise, not "
                  "shown (train it longer)")


def speed_text(cell: Cell) -> str:
    """'1.82×', or '~1.05×' when the interval includes 1 (not distinguishable from the fastest fp32)."""
    if cell.vs_best_fp32 is None:
        return ""
    tied = cell.vs_best_fp32_low is not None and cell.vs_best_fp32_low <= 1.0 <= (cell.vs_best_fp32_high or 0.0)
    return f"{'~' if tied else ''}{cell.vs_best_fp32:.2f}×"


def drop_text(cell: Cell) -> str:
    """The int8 drop on held-out images in points ('−0.4 pt ±0.6'), '' for a float artifact."""
    if cell.int8_drop_pt is None:
        return ""
    spread = f" ±{cell.int8_drop_ci95_pt:.1f}" if cell.int8_drop_ci95_pt is not None else ""
    return f"drop {cell.int8_drop_pt:+.1f} pt{spread}"


def agreement_text(cell: Cell) -> str:
    """'agree 76 %': how often an int8 artifact picks the eager fp32 model's class, '' otherwise."""
    return f"agree {cell.agreement_with_eager * 100:.0f} %" if cell.agreement_with_eager is not None else ""


def note_number(cell: Cell, notes: dict[str, int]) -> int:
    """The number of the cell's reason; a reason that differs from another only by the name of its
    architecture is the same note (the row already names the architecture)."""
    general = re.sub(rf"(?<![\w:.-]){re.escape(cell.model)}(?![\w-])", "the architecture", cell.reason)
    return notes.setdefault(general, len(notes) + 1)


def noise_note(notes: dict[str, int]) -> int:
    """The number of the note saying a drop on a model below :data:`MEANINGFUL_TOP1` is noise."""
    return notes.setdefault(NOT_MEANINGFUL, len(notes) + 1)


def cell_text(cell: Cell | None, notes: dict[str, int], fp32_top1: float | None = None) -> str:
    """What a matrix cell says; a skip or failure points at its numbered reason. Where the
    architecture's fp32 model is below :data:`MEANINGFUL_TOP1`, an int8 cell says its drop is not
    meaningful instead of printing it, and an int8 build refused for missing the budget says the
    miss is not meaningful either (its reason, with the drop, is still in the notes)."""
    if cell is None:
        return ""
    noise = fp32_top1 is not None and fp32_top1 < MEANINGFUL_TOP1
    if cell.status == FAILED and cell.int8_drop_pt is not None and noise:  # a budget missed on noise
        return f"over budget, n/m [{noise_note(notes)}] [{note_number(cell, notes)}]"
    if cell.status != BUILT:
        return f"{'skip' if cell.status == SKIPPED else '**fail**'} [{note_number(cell, notes)}]"
    if cell.int8_drop_pt is not None and noise:
        return " ".join(part for part in ("✓", speed_text(cell), f"drop n/m [{noise_note(notes)}]") if part)
    parts = [part for part in ("✓", speed_text(cell), drop_text(cell), agreement_text(cell)) if part]
    if cell.reason:  # built, not measured here (a GPU format on a CPU)
        parts.append(f"[{note_number(cell, notes)}]")
    return " ".join(parts)


def families_of(matrix: Matrix) -> list[str]:
    """The families in the order they were built (first appearance)."""
    return list(dict.fromkeys(cell.family for cell in matrix.cells))


def matrix_table(matrix: Matrix, notes: dict[str, int]) -> list[str]:
    families = families_of(matrix)
    lines = ["| architecture | px | fp32 top-1 | " + " | ".join(families) + " |",
             "|---|---:|---:|" + "---|" * len(families)]
    for row in matrix.models:
        top1 = f"{row.fp32_top1:.1%}" if row.fp32_top1 is not None else "–"
        cells = [cell_text(matrix.cell(row.model, family), notes, row.fp32_top1) for family in families]
        lines.append(f"| {row.model} | {row.image_size} | {top1} | " + " | ".join(cells) + " |")
    return lines


def totals_line(matrix: Matrix) -> str:
    counts = {status: sum(c.status == status for c in matrix.cells) for status in (BUILT, SKIPPED, FAILED)}
    return (f"{len(matrix.models)} architectures × {len(families_of(matrix))} families: "
            f"{counts[BUILT]} built, {counts[SKIPPED]} skipped, {counts[FAILED]} failed.")


def reuse_text(matrix: Matrix) -> str:
    """What the run's time leaves out: checkpoints and artifacts an earlier run made ('' when none)."""
    checkpoints = sum(row.reused_checkpoint for row in matrix.models)
    artifacts = sum(cell.reused for cell in matrix.cells)
    if not checkpoints and not artifacts:
        return ""
    return (f" (not counting {checkpoints} trainings and {artifacts} builds an earlier run had done: "
            f"they were up to date and reused)")


def where_text(matrix: Matrix) -> str:
    """This host, or (a cluster run) the nodes and CPU classes the rows were measured on."""
    nodes = {row.measured_on.node: row.measured_on for row in matrix.models if row.measured_on}
    if not nodes:
        return f"on `{matrix.cpu}` ({', '.join(matrix.isa)})"
    classes = sorted({f"`{m.cpu}` ({m.cpu_class})" for m in nodes.values()})
    return f"on a Ray cluster: {len(nodes)} node(s), {'; '.join(classes)} (each row's node in compatibility.json)"


def method_lines(matrix: Matrix) -> list[str]:
    o = matrix.options
    minutes = matrix.seconds / 60
    return [
        f"Made {matrix.created} {where_text(matrix)} in {minutes:.0f} min{reuse_text(matrix)} "
        f"with `{matrix.command}`.",
        "",
        f"Each architecture was trained {o.epochs} epochs on {o.train_samples} seeded {o.data} train images "
        f"(a tenth held out for the accuracy budget) and scored on {o.test_samples} test images. Int8 families "
        f"calibrate on {o.calibration_samples} train images and keep layers in float until the drop on the "
        f"held-out images meets {o.max_accuracy_drop:g} pt (judged on the {o.budget_verdict}). Batch 1 is "
        f"measured in {o.rounds} rounds of at least {o.min_seconds:g} s, each a fresh process on one pinned core.",
        *preprocessing_lines(matrix),
        "These are short runs on small subsets: the drops say whether the export keeps what the model learnt, "
        "not how accurate the architecture is, and latencies carry wide intervals.",
        "",
        "A built cell reads `✓ 1.82× drop −0.3 pt ±0.5 agree 97 %`: batch-1 speed-up over the architecture's "
        "fastest fp32 artifact (`~` when its 95 % interval includes 1×), and for int8 the top-1 drop on the "
        "held-out images with the half-width of its paired 95 % interval, and the share of test images where "
        "it picks the fp32 model's class (low agreement with a small drop: the model's logits are too flat "
        "for its int8 classes to mean much). `over budget, n/m` is an int8 build refused for missing the "
        "budget on a model too weak for its drop to mean anything: train it longer before trusting the refusal.",
    ]


def preprocessing_lines(matrix: Matrix) -> list[str]:
    """The input contract the cells were trained, built and scored under (one line per distinct one)."""
    contracts = list(dict.fromkeys(row.preprocessing for row in matrix.models if row.preprocessing))
    return [f"Inputs: {text}." for text in contracts]


def notes_lines(notes: dict[str, int]) -> list[str]:
    if not notes:
        return []
    return ["", "## Why a cell is not built, or not measured", ""] + [f"{number}. {reason}" for reason, number in notes.items()]


def problems_lines(matrix: Matrix) -> list[str]:
    problems = [row for row in matrix.models if row.problem]
    if not problems:
        return []
    return ["", "## Architectures that did not train or load", ""] + [f"- {row.model}: {row.problem}" for row in problems]


def pending_lines(matrix: Matrix) -> list[str]:
    """Architectures asked for that the run did not reach (it was stopped): named, not silently absent."""
    done = {row.model for row in matrix.models}
    pending = [model for model in matrix.options.models if model not in done]
    return ["", f"Not reached (the run was stopped first): {', '.join(pending)}."] if pending else []


def markdown(matrix: Matrix) -> str:
    notes: dict[str, int] = {}
    table = matrix_table(matrix, notes)
    lines = ["# Compatibility: architectures × deployment families", "", totals_line(matrix), "",
             *method_lines(matrix), "", *table, *pending_lines(matrix), *notes_lines(notes), *problems_lines(matrix)]
    return "\n".join(lines) + "\n"
