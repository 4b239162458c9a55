"""Terminal rendering of facts (rich tables on stdout)."""

from __future__ import annotations

import json
import sys

from rich.console import Console
from rich.table import Table

from qexport.core.build_records import Verdict
from qexport.core.manifest import Precision

# Reports are often piped into logs: don't squeeze tables into 80 columns there.
console = Console(width=None if sys.stdout.isatty() else 180)


def print_info(as_json: bool = False) -> None:
    from qexport.core.documents import to_json
    from qexport.runtimes.environment import IPEX_PACKAGE, current_environment

    env = current_environment()
    if as_json:
        print(json.dumps(to_json(env), indent=2))
        return
    table = Table(title="qexport environment", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    table.add_row("python", env.python)
    table.add_row("platform", env.platform)
    for name, version in env.libraries.items():
        if name == IPEX_PACKAGE:
            version = env.ipex_summary()
        table.add_row(name, version or "[dim]not installed[/dim]")
    table.add_row("cpu", f"{env.cpu.model} ({env.cpu.logical_cores} logical cores)")
    for label, present in env.cpu.isa.items():
        table.add_row(f"  {label}", "yes" if present else "no")
    table.add_row("gpu", ", ".join(env.gpus) or "none")
    console.print(table)


def print_families(families, target_cpu: str) -> None:
    """Every family, and whether *this* host can build and run it (and why not)."""
    from qexport.core.hardware import host_cpu, resolve_target
    from qexport.runtimes import runtime_problem

    cpu = host_cpu()
    target = resolve_target(target_cpu, cpu)
    table = Table(title=f"artifact families on this host: {cpu.model} ({cpu.isa_class()}), --target-cpu {target.name}")
    for column in ("family", "format", "precision", "runtime", "build here", "run here", "method"):
        table.add_column(column, overflow="fold")
    runtime_problems = {name: runtime_problem(name) for name in dict.fromkeys(f.runtime for f in families)}
    for f in families:
        runtime = runtime_problems[f.runtime]
        build = f.build_problem(cpu) or runtime
        needs = f.artifact_needs(target, cpu)
        run = (needs.problem(cpu) if needs else None) or runtime
        table.add_row(f.key, f.format, f.precision, f.runtime, _yes_or(build), _yes_or(run), f.method)
    console.print(table)


def budget_cell(budget, precision: str) -> str:
    """'0.20 ±0.61 / 1' (top-1 points lost on the validation split with the 95 % interval / the
    budget), with the float layers kept; 'estimate only' when the interval reaches over the budget
    (--budget-verdict estimate) and 'train images' when no validation split was there."""
    if budget is None:
        return "not checked (see notes)" if precision == Precision.INT8 else "-"
    kept = f", {len(budget.kept_float)} float" if budget.kept_float else ""
    spread = f" ±{budget.drop_ci95_pt:.2f}" if budget.drop_ci95_pt is not None else ""
    caveats = [c for c, shown in (("estimate only", budget.verdict is Verdict.ESTIMATE_ONLY),
                                  ("train images", not budget.unseen)) if shown]
    return f"{budget.drop_pt:.2f}{spread} / {budget.max_drop_pt:g}{kept}" + (f" ({', '.join(caveats)})" if caveats else "")


def built_cells(m, base_size: int | None) -> list[str]:
    """A built artifact's figures in the build table, from file on: MB, how many times smaller than
    the baseline artifact (``base_size`` bytes), top-1, its change against the eager fp32 model,
    agreement, int8 share, budget and build seconds."""
    size, ev = m.artifact.total_size_bytes, m.evaluation
    return [m.artifact.file, f"{size / 1e6:.2f}", f"{base_size / size:.2f}" if base_size else "",
            f"{ev.top1:.2%}", f"{ev.change_pt:+.2f}", f"{ev.top1_agreement_with_eager:.2%}",
            int8_share_cell(m.int8_coverage), budget_cell(m.accuracy_budget, m.precision), f"{m.build.seconds:.0f}"]


def int8_share_cell(coverage) -> str:
    """The int8 share with what it counts: a family that cannot see weights counts layers, and
    5 of 21 layers (23.8 %) is not the 6.7 % of weights those layers hold."""
    if coverage is None:
        return "-"
    counted = "weights" if coverage.total_weights is not None else "layers"
    return f"{coverage.ratio:.1%} {counted}"


def _yes_or(problem: str | None) -> str:
    return "[green]yes[/green]" if problem is None else f"[yellow]no[/yellow]: {problem}"


def print_build(outcomes, out_dir) -> None:
    """The build's own report: size ratio and accuracy against fp32, measured at build time."""
    from pathlib import Path

    from qexport.exporter.build import BuildStatus
    from qexport.core.index import read_index
    from qexport.runtimes.results import BASELINE

    index_file = Path(out_dir) / "index.json"
    entries = read_index(index_file).artifacts if index_file.is_file() else []
    base_size = next((e.size_bytes for e in entries if e.family == BASELINE), None)
    table = Table(title=f"qexport build → {out_dir}")
    columns = ("family", "status", "file", "MB", "× smaller", "top-1", "Δ vs fp32 (pt)", "agree", "int8 share",
               "pt lost / budget", "s")
    for column in columns:
        table.add_column(column, justify="right" if column not in ("family", "status", "file") else "left")
    for o in outcomes:
        m = o.manifest
        if not m:
            colour = "yellow" if o.status is BuildStatus.SKIPPED else "red"
            table.add_row(o.family, f"[{colour}]{o.status}[/{colour}]", "see below", *[""] * (len(columns) - 3))
            continue
        table.add_row(o.family, str(o.status), *built_cells(m, base_size))
    console.print(table)
    for o in outcomes:
        budget = o.manifest.accuracy_budget if o.manifest else None
        if budget and budget.kept_float:
            console.print(f"{o.family} kept {len(budget.kept_float)} layer(s) in float to stay within "
                          f"{budget.max_drop_pt:g} pt ({', '.join(budget.kept_float)}); still int8: "
                          f"{budget.int8_weight_share:.1%} of conv/linear weights, {budget.int8_mac_share:.1%} of "
                          "their multiply-accumulates", highlight=False)
    for o in outcomes:
        if not o.produced:
            colour = "yellow" if o.status is BuildStatus.SKIPPED else "red"
            console.print(f"[{colour}]{o.family} {o.status}:[/{colour}] {o.reason}", highlight=False)
    if any(o.manifest.synthetic for o in outcomes if o.manifest):
        console.print("[bold red]SYNTHETIC data: these accuracies mean nothing.[/bold red]")
