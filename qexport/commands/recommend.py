"""Which file to ship, per deployment target, and only as sure as the measurements: a function of
bench.json and the manifests alone (no new measurement).

For each target -- ``latency@B`` (lowest p50 at batch B), ``throughput`` (most images per second
at the best batch size measured), ``size`` and ``cold-start`` (loading plus the first call) --
the artifacts that qualify (within the accuracy budget, on an allowed runtime, portable to the
target CPU class) are ranked. The leader's equals are those whose paired round-by-round ratio to
it has a 95 % interval containing 1: the measurement cannot tell them apart, so they are listed as
equals and the tie is broken by a stated secondary criterion (size, then load time), never by
the p50 alone.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from qexport.core.cpu_needs import cpu_needs
from qexport.core.errors import QExportError, did_you_mean
from qexport.core.build_records import DEFAULT_MAX_DROP
from qexport.core.manifest import Manifest
from qexport.core.options import option
from qexport.runtimes.results import BenchDocument, BenchRow
from qexport.runtimes.stats import Interval, geometric_interval, paired_ratio

TARGET_KINDS = ("latency@B", "throughput", "size", "cold-start")
TIE_BREAK = "the smaller file, then the faster load"


@dataclass(frozen=True)
class RecommendOptions:
    """What the team can ship: its accuracy budget, runtimes and CPU class (None: any)."""

    max_accuracy_drop: float = option(
        DEFAULT_MAX_DROP, "--max-accuracy-drop",
        "Top-1 points an artifact may lose against fp32, judged as the build judges it: the upper end of the "
        "drop's 95 % interval on held-out images (an artifact without a budget record: its test-split drop).")
    runtimes: tuple[str, ...] | None = option(
        None, "--runtimes", "Only artifacts these runtimes run, comma-separated, e.g. onnxruntime,openvino.")
    target_cpu: str | None = option(
        None, "--target-cpu", "Only artifacts that run on every CPU of this class: avx2 or avx512.")


@dataclass(frozen=True)
class Candidate:
    """One measured artifact with what the recommendation reads of it."""

    row: BenchRow
    manifest: Manifest

    @property
    def family(self) -> str:
        return self.row.family

    @property
    def load_ms(self) -> float:
        return self.row.result.load_ms if self.row.result else float("inf")


@dataclass(frozen=True)
class Pick:
    """The answer for one target: the artifact to ship, what it measured, and its equals."""

    target: str
    family: str | None
    value: Interval | None
    unit: str
    equals: list[str] = field(default_factory=list)
    note: str = ""

    def line(self) -> str:
        if self.family is None:
            return f"{self.target}: nothing to ship -- {self.note}"
        shown = format_interval(self.value, self.unit) if self.value else ""
        text = f"{self.target}: ship {self.family} ({shown})" if shown else f"{self.target}: ship {self.family}"
        if self.equals:
            text += f"; cannot be told apart from {', '.join(self.equals)}, so chosen by {TIE_BREAK}"
        return text + (f"; {self.note}" if self.note else "")


def format_interval(value: Interval, unit: str = "") -> str:
    """'0.62 ms [0.6–0.64]', or the estimate alone where there is no interval (one round)."""
    shown = f"{value.estimate:.3g}" + (f" {unit}" if unit else "")
    if value.low is None or value.high is None:
        return shown
    return f"{shown} [{value.low:.3g}–{value.high:.3g}]"


def targets_of(doc: BenchDocument) -> list[str]:
    """The targets this bench can answer: latency at each batch size measured, then the rest."""
    return [f"latency@{batch}" for batch in doc.batch_keys] + ["throughput", "size", "cold-start"]


def check_target(name: str, doc: BenchDocument) -> None:
    known = targets_of(doc)
    if name not in known:
        raise QExportError(f"Unknown target {name!r}{did_you_mean(name, known)}; this bench answers {', '.join(known)}.")


def check_runtimes(names: tuple[str, ...]) -> None:
    from qexport.runtimes import RUNTIMES

    for name in names:
        if name not in RUNTIMES:
            raise QExportError(f"Unknown runtime {name!r}{did_you_mean(name, RUNTIMES)}; "
                               f"choose from {', '.join(sorted(RUNTIMES))}.")


def check_matches(doc: BenchDocument, manifests: dict[str, Manifest]) -> None:
    """bench.json must describe these very files: a row whose manifest is gone or whose file changed
    since the bench is refused, naming it (a recommendation from other files would be a guess)."""
    for row in doc.rows:
        manifest = manifests.get(row.family)
        if manifest is None:
            raise QExportError(f"bench.json measured {row.file}, which this folder has no manifest for; "
                               "bench this folder again (`qexport bench DIR`).")
        if row.sha256 and row.sha256 != manifest.artifact.sha256:
            raise QExportError(f"{row.file} changed since bench.json measured it (its sha256 differs); "
                               "bench this folder again (`qexport bench DIR`).")


def accuracy_problem(manifest: Manifest, max_drop: float) -> str | None:
    """None when the artifact is within the budget as the build judges it (the upper end of the
    drop's interval on held-out images); an artifact without a budget record is judged on its
    test-split drop against the eager model."""
    budget = manifest.accuracy_budget
    if budget is not None:
        upper = budget.upper_pt
        return None if upper <= max_drop else f"loses up to {upper:.2f} pt (budget {max_drop:g})"
    evaluation = manifest.evaluation
    if evaluation.fp32_reference_top1 is None:
        return None
    drop = (evaluation.fp32_reference_top1 - evaluation.top1) * 100
    return None if drop <= max_drop else f"loses {drop:.2f} pt on the test split (budget {max_drop:g})"


def portable_problem(manifest: Manifest, target_cpu: str | None) -> str | None:
    """None when the artifact runs on every CPU of the ``target_cpu`` class (avx2, avx512)."""
    if target_cpu is None:
        return None
    from qexport.core.hardware import TARGETS, HostCpu

    if target_cpu not in TARGETS or TARGETS[target_cpu].needs is None:
        choices = [name for name, target in TARGETS.items() if target.needs is not None]
        raise QExportError(f"Unknown --target-cpu {target_cpu!r} for a recommendation; choose {', '.join(choices)}.")
    needs, _ = cpu_needs(manifest)
    klass = HostCpu(target_cpu, TARGETS[target_cpu].needs.any_of[0])
    return None if needs is None or needs.met_by(klass) else f"needs {needs.label}"


def candidates(doc: BenchDocument, manifests: dict[str, Manifest], options: RecommendOptions
               ) -> tuple[list[Candidate], dict[str, str]]:
    """The measured artifacts that qualify, and why each other one does not."""
    kept, left_out = [], {}
    for row in doc.rows:
        manifest = manifests[row.family]
        reason = ("not measured" if not row.measured
                  else f"runtime {row.runtime} not among --runtimes" if options.runtimes and row.runtime not in options.runtimes
                  else accuracy_problem(manifest, options.max_accuracy_drop)
                  or portable_problem(manifest, options.target_cpu))
        if reason:
            left_out[row.family] = reason
        else:
            kept.append(Candidate(row, manifest))
    return kept, left_out


@dataclass(frozen=True)
class Measure:
    """How a target reads a candidate: per-round values (lower is better) and the reported value."""

    rounds: Callable[[Candidate], list[float] | None]
    shown: Callable[[Candidate], Interval | None]
    unit: str


def latency_measure(batch: str) -> Measure:
    def rounds(c: Candidate) -> list[float] | None:
        result = c.row.batch(batch)
        return result.round_medians() if result else None

    return Measure(rounds, lambda c: c.row.batch(batch).p50_interval_ms if c.row.batch(batch) else None, "ms")


def best_batch(c: Candidate) -> str | None:
    """The batch size at which the candidate serves the most images per second."""
    measured = [(int(b), r) for b, r in (c.row.result.batches.items() if c.row.result else ())]
    return str(max(measured, key=lambda item: item[1].throughput_ips)[0]) if measured else None


def ms_per_image_rounds(c: Candidate) -> list[float] | None:
    batch = best_batch(c)
    return [ms / int(batch) for ms in c.row.batch(batch).round_medians()] if batch else None


def throughput_shown(c: Candidate) -> Interval | None:
    rounds = ms_per_image_rounds(c)
    if not rounds:
        return None
    per_image = geometric_interval(rounds)
    flip = (lambda v: None if v is None else 1000.0 / v)
    return Interval(1000.0 / per_image.estimate, flip(per_image.high), flip(per_image.low), per_image.rounds)


def cold_rounds(c: Candidate) -> list[float] | None:
    return (c.row.result.cold_start_rounds() or None) if c.row.result else None


MEASURES: dict[str, Callable[[], Measure]] = {
    "throughput": lambda: Measure(ms_per_image_rounds, throughput_shown, "img/s"),
    "cold-start": lambda: Measure(cold_rounds, lambda c: c.row.result.cold_start_ms_interval if c.row.result else None,
                                  "ms"),
}


def equal_to(leader: list[float], other: list[float]) -> bool:
    """Whether the paired ratio other/leader has a 95 % interval containing 1 (one round: never)."""
    ratio = paired_ratio(other, leader)
    return ratio.low is not None and not ratio.excludes(1.0)


def pick(target: str, pool: list[Candidate]) -> Pick:
    """The leader for a measured target, its equals, and the tie broken by size then load time."""
    if target == "size":
        ranked = sorted(pool, key=lambda c: (c.row.size_bytes, c.load_ms))
        if not ranked:
            return Pick(target, None, None, "MB")
        best = ranked[0]
        return Pick(target, best.family, Interval(best.row.size_bytes / 1e6, None, None, 1), "MB")
    measure = latency_measure(target.split("@", 1)[1]) if target.startswith("latency@") else MEASURES[target]()
    scored = [(c, measure.rounds(c)) for c in pool]
    scored = [(c, r) for c, r in scored if r]
    if not scored:
        return Pick(target, None, None, measure.unit, note="no qualifying artifact measured it")
    leader, leader_rounds = min(scored, key=lambda item: geometric_interval(item[1]).estimate)
    group = [c for c, r in scored if c is leader or equal_to(leader_rounds, r)]
    chosen = min(group, key=lambda c: (c.row.size_bytes, c.load_ms))
    equals = sorted(c.family for c in group if c is not chosen)
    return Pick(target, chosen.family, measure.shown(chosen), measure.unit, equals)


def recommend(doc: BenchDocument, manifests: dict[str, Manifest], options: RecommendOptions = RecommendOptions(),
              only: tuple[str, ...] | None = None) -> tuple[list[Pick], dict[str, str]]:
    """One pick per target (``only``: those targets), and why each left-out artifact is left out."""
    check_matches(doc, manifests)
    if options.runtimes:
        check_runtimes(options.runtimes)
    for name in only or ():
        check_target(name, doc)
    pool, left_out = candidates(doc, manifests, options)
    picks = [with_settings_note(pick(target, pool), doc) for target in (only or targets_of(doc))]
    if not pool:
        picks = [Pick(p.target, None, None, p.unit, note=nothing_qualifies(doc, manifests, options)) for p in picks]
    return picks, left_out


def with_settings_note(chosen: Pick, doc: BenchDocument) -> Pick:
    """A latency pick measured under tuned runtime settings says which: shipping the file without
    them gives the defaults' speed."""
    from qexport.runtimes.settings import how_to_apply

    if chosen.family is None or not chosen.target.startswith("latency@"):
        return chosen
    row = next((r for r in doc.rows if r.family == chosen.family), None)
    settings = row.settings.get(chosen.target.split("@", 1)[1]) if row else None
    if not settings:
        return chosen
    said = f"measured with its tuned settings {' '.join(how_to_apply(row.runtime, settings))} (ship them with it)"
    return replace(chosen, note="; ".join(part for part in (chosen.note, said) if part))


def nothing_qualifies(doc: BenchDocument, manifests: dict[str, Manifest], options: RecommendOptions) -> str:
    """No artifact is within the budget: say so, naming the closest one and its drop."""
    drops = [(m.accuracy_budget.upper_pt, family) for family, m in manifests.items()
             if m.accuracy_budget is not None and any(r.family == family and r.measured for r in doc.rows)]
    if not drops:
        return "no measured artifact qualifies (see the left-out list)"
    upper, family = min(drops)
    return (f"no artifact is within --max-accuracy-drop {options.max_accuracy_drop:g}; the closest is {family}, "
            f"losing up to {upper:.2f} pt")


def recommendation_lines(picks: list[Pick], left_out: dict[str, str], options: RecommendOptions) -> list[str]:
    """The section bench.md, the model card and `qexport recommend` print."""
    rules = [f"within {options.max_accuracy_drop:g} pt of fp32 (the upper end of the drop's 95 % interval)"]
    if options.runtimes:
        rules.append(f"on {', '.join(options.runtimes)}")
    if options.target_cpu:
        rules.append(f"portable to every {options.target_cpu} CPU")
    lines = [f"Which file to ship ({'; '.join(rules)}):", ""]
    lines += [f"- {p.line()}" for p in picks]
    if left_out:
        lines += ["", "Left out: " + "; ".join(f"{family} ({why})" for family, why in sorted(left_out.items()))]
    return lines


def accuracy_of(row: BenchRow) -> float | None:
    """Top-1 as bench measured it, else as the build did."""
    return row.result.eval.top1 if row.result and row.result.eval else row.build_top1


def pareto_front(rows: list[BenchRow], batch: str) -> list[BenchRow]:
    """The measured artifacts no other beats on both top-1 and p50 at ``batch`` (at least as
    accurate and at least as fast, better on one), fastest first."""
    scored = [(row, accuracy_of(row), row.batch(batch).p50_ms) for row in rows
              if row.measured and row.batch(batch) and accuracy_of(row) is not None]
    front = [row for row, top1, ms in scored
             if not any(a >= top1 and m <= ms and (a > top1 or m < ms) for _, a, m in scored)]
    return sorted(front, key=lambda row: row.batch(batch).p50_ms)


def pareto_lines(doc: BenchDocument) -> list[str]:
    """The front of accuracy against latency at the first batch size, as a table."""
    batch = doc.batch_keys[0]
    front = pareto_front(doc.rows, batch)
    if not front:
        return []
    lines = [f"Accuracy against latency at batch {batch} (the Pareto front: no other artifact is both more "
             "accurate and faster):", "", "| family | top-1 | p50 ms [95 % CI] |", "|---|---:|---:|"]
    for row in front:
        interval = row.batch(batch).p50_interval_ms
        lines.append(f"| {row.family} | {accuracy_of(row):.2%} | {format_interval(interval)} |")
    return lines
