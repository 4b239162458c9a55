"""``qexport tune DIR``: measure each artifact's runtime settings on this CPU class, write the
winners into the manifests (bench, verify, LoadGen and the model card apply them from there) and a
report, tune.md and tune.json, beside the artifacts: defaults against tuned, every candidate's
verdict with its paired interval."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from qexport.core.documents import to_json
from qexport.core.envinfo import command_line
from qexport.core.fsutil import atomic_write_bytes, atomic_write_json
from qexport.core.hardware import HostCpu
from qexport.runtimes.bench_options import BenchOptions
from qexport.runtimes.tuning import Choice, Plan, TrialVerdict, TuneOptions, TuneRow

TUNE_JSON, TUNE_MD = "tune.json", "tune.md"


@dataclass
class TuneDocument:
    """What tune.json records: the host and its CPU class, how it measured, each row."""

    created: str
    command: str
    cpu: str
    cpu_class: str
    options: TuneOptions
    threads: int
    pinned_cores: list[int]
    rows: list[TuneRow] = field(default_factory=list)
    not_tuned: list[str] = field(default_factory=list)  # '<family>: why'
    duration_s: float = 0.0


def run_tune(directory: Path, tune: TuneOptions, bench: BenchOptions, cpu: HostCpu, write: bool = True,
             progress=None, asked: list[tuple[str, str]] | None = None) -> TuneDocument:
    """Measure, decide, and (``write``) record the winners in each manifest."""
    from qexport.core.index import discover
    from qexport.runtimes.harness import match_entries
    from qexport.runtimes.tuning import choices, measure, plans_for, rows_for

    started = time.time()
    plans, not_tuned = plans_for(match_entries(discover(directory), bench), bench, cpu, asked)
    measure(plans, bench, progress)
    doc = TuneDocument(created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                       command=command_line(), cpu=cpu.model,
                       cpu_class=cpu.isa_line(), options=tune, threads=bench.threads,
                       pinned_cores=bench.pinned_cores(), not_tuned=not_tuned)
    for plan in plans:
        made = choices(plan)
        doc.rows.extend(rows_for(plan, made))
        if write and made:
            write_records(plan, made, cpu, tune.rounds)
    doc.duration_s = round(time.time() - started, 1)
    return doc


def write_records(plan: Plan, made: list[Choice], cpu: HostCpu, rounds: int) -> None:
    """The plan's choices into its manifest, replacing what an earlier tune recorded for this CPU class."""
    from qexport.runtimes.tuning import record, with_records

    updated = with_records(plan.manifest, [record(choice, cpu, rounds) for choice in made], cpu.isa_line())
    atomic_write_json(plan.manifest_file, to_json(updated))


def write_report(doc: TuneDocument, out: Path) -> list[Path]:
    written = [Path(out) / TUNE_JSON, Path(out) / TUNE_MD]
    atomic_write_json(written[0], to_json(doc))
    atomic_write_bytes(written[1], markdown(doc).encode())
    return written


def interval_text(interval) -> str:
    """'0.68× [0.59×–0.79×]' (bench's format), '-' for the defaults."""
    from qexport.commands.benchreport import fmt_interval

    return fmt_interval(interval, "{:.2f}×")


def table(doc: TuneDocument) -> list[str]:
    lines = ["| artifact | batch | defaults p50 ms | tuned p50 ms | kept | speed-up [95 % CI] |",
             "|---|---:|---:|---:|---|---|"]
    for row in doc.rows:
        if row.problem:
            lines.append(f"| {row.family} | {row.batch_size} | – | – | not tuned: {row.problem} | – |")
            continue
        kept = "<br>".join(f"`{how}`" for how in row.how) or "defaults won"
        lines.append(f"| {row.family} | {row.batch_size} | {row.defaults_p50_ms:.3f} | {row.tuned_p50_ms:.3f} | "
                     f"{kept} | {interval_text(row.speedup)} |")
    return lines


def trial_lines(doc: TuneDocument) -> list[str]:
    """Every candidate's verdict, so a reader sees what lost and why, not only what won."""
    from qexport.runtimes.settings import describe

    lines = []
    for row in doc.rows:
        for trial in row.trials:
            why = f" ({trial.reason})" if trial.reason and trial.verdict is not TrialVerdict.KEPT else ""
            lines.append(f"- {row.family} batch {row.batch_size}, {describe(trial.settings)}: {trial.verdict} "
                         f"{interval_text(trial.speedup)}{why}")
    return lines


def markdown(doc: TuneDocument) -> str:
    won = sum(1 for row in doc.rows if row.settings)
    o = doc.options
    lines = [
        f"# Runtime settings tuned on {doc.cpu_class}", "",
        f"Measured {doc.created} on `{doc.cpu}` ({doc.cpu_class}) in {doc.duration_s / 60:.1f} min with "
        f"`{doc.command}`: {o.rounds} interleaved rounds, each artifact under its defaults and under each "
        f"candidate (one setting changed) in fresh workers pinned to core(s) {','.join(map(str, doc.pinned_cores))} "
        f"with {doc.threads} thread(s), at least {o.min_seconds:g} s per batch size.",
        "",
        "A candidate is kept only when the 95 % interval of its round-by-round paired speed-up over the defaults "
        "lies above 1; a tie keeps the defaults. A candidate whose outputs leave the golden tolerance, or whose "
        "worker fails, is rejected. The kept settings are recorded in each manifest for this CPU class and applied "
        "by bench, verify and LoadGen on hosts of the same class only.",
        "",
        f"{won} of {len(doc.rows)} artifact × batch pairs run faster with a setting; the defaults won the rest."
        if won else "The defaults won everywhere: no setting was faster with 95 % confidence.",
        "", *table(doc), "", "## Every candidate", "", *trial_lines(doc),
    ]
    if doc.not_tuned:
        lines += ["", "## Not tuned", "", *[f"- {line}" for line in doc.not_tuned]]
    return "\n".join(lines) + "\n"
