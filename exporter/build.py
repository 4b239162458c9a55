"""Build orchestration: which families to build, one after another or ``jobs`` at once, each
outcome (built, up to date, skipped, failed) and Ctrl-C.

A family's build function only writes its file; everything a deployment team needs to trust that
file is produced around it, identically for every family, by one module per job:
``isolation`` (the child process), ``budget_search`` (the accuracy budget), ``measure`` (the file
in its own runtime), ``manifests`` (manifest, index and the up-to-date check).
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from qexport.core.documents import TextEnum
from qexport.core.errors import QExportError, RuntimeMissing, describe_exception
from qexport.exporter.budget import HeldOut
from qexport.exporter.budget_search import build_within_budget
from qexport.exporter.manifests import is_up_to_date, make_manifest, write_index
from qexport.exporter.isolation import prepare_fork_server
from qexport.exporter.measure import Reference, measure, write_golden
from qexport.exporter.registry import BuildContext, Family
from qexport.core.fsutil import atomic_path, atomic_write_json, ensure_writable_dir
from qexport.core.artifact_files import golden_path, manifest_path, read_manifest
from qexport.core.build_records import AccuracyBudget, OverBudget
from qexport.core.index import Failure
from qexport.core.manifest import Manifest
from qexport.core.progress import current_label, labelled, say


class BuildStatus(TextEnum):
    BUILT = "built"
    UP_TO_DATE = "up-to-date"
    SKIPPED = "skipped"
    FAILED = "failed"


@dataclass
class Outcome:
    family: str
    status: BuildStatus
    file: str | None = None
    reason: str = ""
    manifest: Manifest | None = None
    over_budget: AccuracyBudget | None = None  # failed: the int8 drop that missed the budget

    def __post_init__(self) -> None:
        self.status = BuildStatus(self.status)  # a status given as its text is checked and typed here

    @property
    def produced(self) -> bool:
        """An artifact is there to use: built now, or found up to date."""
        return self.status in (BuildStatus.BUILT, BuildStatus.UP_TO_DATE)


@dataclass
class BuildRun:
    """One ``build`` invocation's shared state: what every family is measured against (computed
    once), where the files go, and the cancel flag a Ctrl-C sets for every build thread."""

    ctx: BuildContext
    out_dir: Path
    force: bool = False
    debug: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.reference, self.held_out = Reference(self.ctx), HeldOut(self.ctx)

    def stop_if_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise KeyboardInterrupt


def build_families(ctx: BuildContext, families: list[Family], out_dir: Path, force: bool = False,
                   debug: bool = False, jobs: int = 1) -> list[Outcome]:
    """Build each family; one failing never stops the others. ``jobs`` > 1 builds that many at
    once, each still in its own child process, with every status line labelled by its family."""
    ensure_writable_dir(out_dir)
    if any(needs_a_child(ctx, out_dir, family, force) for family in families):
        prepare_fork_server()  # its imports overlap the reference logits computed next
    run = BuildRun(ctx, out_dir, force, debug)
    refuse_unresolvable_budget(run, families)

    def build(family: Family) -> Outcome:
        return build_or_record(run, family)

    outcomes = [build(f) for f in families] if jobs <= 1 else build_concurrently(build, families, jobs, run.cancelled)
    write_index(out_dir, ctx.model_name, [Failure(o.family, o.reason) for o in outcomes if o.status is BuildStatus.FAILED])
    return outcomes


def refuse_unresolvable_budget(run: BuildRun, families: list[Family]) -> None:
    """Before anything is built: budget images too few to resolve the budget at all are one sentence."""
    if any(f.is_int8 and not f.build_problem() for f in families):
        problem = run.held_out.resolution_problem()
        if problem:
            raise QExportError(problem)


def build_concurrently(build: Callable[[Family], Outcome], families: list[Family], jobs: int,
                       cancelled: threading.Event) -> list[Outcome]:
    """``build`` for every family on ``jobs`` threads, outcomes in the families' order. Ctrl-C
    reaches the main thread only: it tells the others to stop (their children are killed, their
    temporary files removed) and waits for them before the interrupt goes on."""
    def labelled_build(family: Family) -> Outcome:
        with labelled(family.key):
            return build(family)

    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="qexport-build") as pool:
        futures = [pool.submit(labelled_build, family) for family in families]
        try:
            return [future.result() for future in futures]
        except BaseException:
            cancelled.set()
            for future in futures:
                future.cancel()
            raise


def print_with_notes(err: BaseException) -> None:
    """``--debug``: the traceback and the notes -- a build process's own traceback travels as one
    (see isolation.py), and Python 3.10 prints no notes by itself."""
    traceback.print_exception(err)
    if sys.version_info < (3, 11):
        for note in getattr(err, "__notes__", []):
            print(note, file=sys.stderr)


def build_or_record(run: BuildRun, family: Family) -> Outcome:
    """One family's outcome: built, up to date, skipped (with the reason) or failed (with one sentence)."""
    problem = why_skipped(family, run.ctx.model_name)
    name = "" if current_label() else f" [bold]{family.key}[/bold]"  # labelled lines already name it
    if problem:  # ipex-bf16 on an AVX2-only host, eager int8 for a model without a quantizable twin
        say(f"[yellow]skipped[/yellow]{name}: {problem}")
        return Outcome(family.key, BuildStatus.SKIPPED, reason=problem)
    say(f"{name.lstrip()} → {family.filename(run.ctx.model_name)}")
    try:
        return build_one(run, family)
    except RuntimeMissing as err:  # e.g. no IPEX environment: say how to get it, build the rest
        say(f"  [yellow]skipped[/yellow]: {err}")
        return Outcome(family.key, BuildStatus.SKIPPED, reason=str(err))
    except QExportError as err:
        if run.debug and getattr(err, "__notes__", None):  # a build process's traceback (see isolation.py)
            print_with_notes(err)
        missed = err.budget if isinstance(err, OverBudget) else None
        outcome = Outcome(family.key, BuildStatus.FAILED, reason=str(err), over_budget=missed)
    except Exception as err:  # an exporter bug must not take the other families down
        if run.debug:
            print_with_notes(err)
        outcome = Outcome(family.key, BuildStatus.FAILED, reason=describe_exception(err))
    say(f"  [red]failed[/red]: {outcome.reason}")
    return outcome


def build_one(run: BuildRun, family: Family) -> Outcome:
    """Build, hold to the budget, measure and write one family -- or find it up to date."""
    ctx = run.ctx
    final = run.out_dir / family.filename(ctx.model_name)
    options = family.up_to_date_key(ctx.options)
    if is_current(ctx, run.out_dir, family, run.force):
        say("  up to date (use --force to rebuild)")
        return Outcome(family.key, BuildStatus.UP_TO_DATE, final.name, manifest=read_manifest(manifest_path(final)))
    started = time.perf_counter()
    with atomic_path(final, family.companions) as tmp:
        details, budget, runner = build_within_budget(family, ctx, tmp, run.held_out, run.cancelled)
        measured = measure(family, tmp, ctx, run.reference, details, runner)
        run.stop_if_cancelled()  # interrupted meanwhile: the temporary file goes, nothing is written
    seconds = time.perf_counter() - started
    golden = golden_path(final)
    write_golden(golden, measured.golden_inputs, measured.golden_outputs, measured.raw_image)
    manifest = make_manifest(ctx, family, final, details, measured.evaluation, options, seconds, golden, budget)
    atomic_write_json(manifest_path(final), manifest.to_dict())
    say(built_line(manifest, seconds))
    return Outcome(family.key, BuildStatus.BUILT, final.name, manifest=manifest)


def why_skipped(family: Family, model_name: str) -> str | None:
    """Why this host or this model cannot have the family (a skip, not a failure); None when it can."""
    return family.build_problem() or family.model_problem(model_name)


def needs_a_child(ctx: BuildContext, out_dir: Path, family: Family, force: bool) -> bool:
    """The family builds in a child process, can be built here and has something to build. A manifest
    that cannot be read counts as something to build: :func:`build_or_record` reports it as that
    family's failure."""
    if not family.isolate or why_skipped(family, ctx.model_name):
        return False
    try:
        return not is_current(ctx, out_dir, family, force)
    except QExportError:
        return True


def is_current(ctx: BuildContext, out_dir: Path, family: Family, force: bool) -> bool:
    """The family's file in ``out_dir`` is up to date and ``--force`` was not given: nothing to build,
    so no child process is needed for it (a fork server started for nothing costs seconds of imports)."""
    final = out_dir / family.filename(ctx.model_name)
    key = family.up_to_date_key(ctx.options)
    return not force and is_up_to_date(family, final, ctx.checkpoint_sha256, key, ctx.data.contract)


def built_line(manifest: Manifest, seconds: float) -> str:
    ev = manifest.evaluation
    return (f"  built in {seconds:.0f} s: {manifest.artifact.total_size_bytes / 1e6:.1f} MB, "
            f"top-1 {fmt_pct(ev.top1)} (fp32 {fmt_pct(ev.fp32_reference_top1)}), "
            f"agreement {fmt_pct(ev.top1_agreement_with_eager)}")


def fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"
