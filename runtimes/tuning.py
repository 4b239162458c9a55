"""``qexport tune``: which runtime settings make each artifact faster on this CPU class, measured
the way ``bench`` measures, and kept only when the measurement says so.

Every candidate is the defaults with one setting changed (:func:`one_change_candidates`). Each
round runs every artifact under the defaults and under each candidate, each in a fresh pinned
worker, interleaved (A A' A'' B B' … A A' A'' …), so the drift of the host hits a candidate and its
defaults alike and their ratio can be paired round by round. A candidate is kept for a batch size
only when the 95 % interval of that ratio lies above 1; a tie keeps the defaults. A candidate whose
outputs leave the golden tolerance, or whose worker crashes or is refused, is rejected and named.

The decision (:func:`judge`, :func:`choose`) is a pure function of per-round p50s, so a test can
check it on hand-made rounds; :func:`measure` is the part that starts processes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from qexport.core.documents import TextEnum
from qexport.core.hardware import HostCpu
from qexport.core.manifest import Manifest, TunedSettings
from qexport.core.options import option
from qexport.runtimes.bench_options import BenchOptions
from qexport.runtimes.results import RowStatus
from qexport.runtimes.settings import describe, one_change_candidates
from qexport.runtimes.stats import Interval, paired_ratio


class TrialVerdict(TextEnum):
    KEPT = "kept"          # faster than the defaults: the paired interval lies above 1
    TIE = "tie"            # the interval includes 1 (or one round gave none): the defaults stay
    SLOWER = "slower"      # the interval lies below 1
    REJECTED = "rejected"  # results beyond the golden tolerance, or the worker crashed or refused


@dataclass(frozen=True)
class Measured:
    """One artifact under one set of settings: each batch size's per-round p50 (ms), or why the
    settings were rejected."""

    settings: dict[str, str]
    round_p50_ms: dict[int, list[float]] = field(default_factory=dict)
    problem: str = ""


@dataclass(frozen=True)
class Trial:
    """One candidate at one batch size, judged against the defaults."""

    settings: dict[str, str]
    batch_size: int
    verdict: TrialVerdict
    speedup: Interval | None = None  # the defaults' p50 / the candidate's, paired round by round
    reason: str = ""


@dataclass(frozen=True)
class Choice:
    """What tuning keeps for one artifact and batch size, and every trial behind it."""

    batch_size: int
    settings: dict[str, str]         # empty: the defaults won
    speedup: Interval | None         # of the kept settings (None: the defaults)
    trials: list[Trial]


def judge(defaults: Measured, candidate: Measured, batch: int) -> Trial:
    """A candidate's verdict at ``batch``: kept only when it is faster with 95 % confidence."""
    if candidate.problem:
        return Trial(candidate.settings, batch, TrialVerdict.REJECTED, reason=candidate.problem)
    base, mine = defaults.round_p50_ms.get(batch, []), candidate.round_p50_ms.get(batch, [])
    if not base or len(base) != len(mine):
        return Trial(candidate.settings, batch, TrialVerdict.REJECTED, reason="not measured in every round")
    ratio = paired_ratio(base, mine)
    if ratio.low is not None and ratio.low > 1:
        return Trial(candidate.settings, batch, TrialVerdict.KEPT, ratio)
    if ratio.high is not None and ratio.high < 1:
        return Trial(candidate.settings, batch, TrialVerdict.SLOWER, ratio)
    return Trial(candidate.settings, batch, TrialVerdict.TIE, ratio,
                 "one round gives no interval" if ratio.low is None else "its interval includes 1")


def choose(defaults: Measured, candidates: list[Measured], batch: int) -> Choice:
    """The fastest kept candidate (by its paired estimate), else the defaults."""
    trials = [judge(defaults, candidate, batch) for candidate in candidates]
    kept = [trial for trial in trials if trial.verdict is TrialVerdict.KEPT]
    if not kept:
        return Choice(batch, {}, None, trials)
    best = max(kept, key=lambda trial: trial.speedup.estimate)
    return Choice(batch, dict(best.settings), best.speedup, trials)


def record(choice: Choice, cpu: HostCpu, rounds: int) -> TunedSettings:
    """The manifest's record of a choice, under this host's CPU class."""
    speedup = choice.speedup
    return TunedSettings(cpu_class=cpu.isa_line(), batch_size=choice.batch_size, settings=choice.settings,
                         speedup=speedup.estimate if speedup else 1.0, speedup_low=speedup.low if speedup else None,
                         speedup_high=speedup.high if speedup else None, rounds=rounds,
                         measured=time.strftime("%Y-%m-%d", time.gmtime()), cpu=cpu.model)


def with_records(manifest: Manifest, records: list[TunedSettings], cpu_class: str) -> Manifest:
    """The manifest with this CPU class's records replaced (other classes' records kept)."""
    from dataclasses import replace

    kept = [t for t in manifest.runtime_settings if t.cpu_class != cpu_class]
    return replace(manifest, runtime_settings=kept + records)


@dataclass
class Plan:
    """One artifact to tune: where it is, and each set of settings it runs under with what was
    measured so far (``measured[0]``: the defaults)."""

    manifest_file: Path
    manifest: Manifest
    batch_sizes: list[int]
    measured: list[Measured]


def asked_candidates(runtime: str, asked: list[tuple[str, str]]) -> list[dict[str, str]]:
    """The --try settings this runtime declares, each checked against its known values."""
    from qexport.runtimes.settings import check_settings, settings_of

    names = {setting.name for setting in settings_of(runtime)}
    chosen = [{name: value} for name, value in asked if name in names]
    for candidate in chosen:
        check_settings(runtime, candidate)
    return chosen


def check_asked(asked: list[tuple[str, str]], runtimes: set[str]) -> None:
    """A --try setting no runtime in the folder declares: one sentence naming the ones they do."""
    from qexport.core.errors import QExportError
    from qexport.runtimes.settings import settings_of

    known = {setting.name: runtime for runtime in sorted(runtimes) for setting in settings_of(runtime)}
    for name, _ in asked:
        if name not in known:
            listed = ", ".join(sorted(known)) or "none"
            raise QExportError(f"--try {name}: no runtime in this folder ({', '.join(sorted(runtimes))}) has that "
                               f"setting; theirs: {listed}.")


def plans_for(entries: list[tuple[Path, Manifest]], options: BenchOptions, cpu: HostCpu,
              asked: list[tuple[str, str]] | None = None) -> tuple[list[Plan], list[str]]:
    """The artifacts that can be tuned here, and one line for each that cannot (why). ``asked``:
    only these (setting, value) candidates (--try), instead of what is worth trying on this CPU."""
    from qexport.runtimes.harness import check_row, served_batch_sizes

    if asked:
        check_asked(asked, {manifest.runtime.name for _, manifest in entries})
    plans, skipped = [], []
    for manifest_file, manifest in entries:
        row = check_row(manifest_file, manifest, options)
        candidates = asked_candidates(manifest.runtime.name, asked) if asked else \
            one_change_candidates(manifest.runtime.name, cpu)
        if row.status is not RowStatus.OK:
            skipped.append(f"{manifest.family}: {row.reason}")
        elif not candidates:
            skipped.append(f"{manifest.family}: {manifest.runtime.name} declares no setting worth trying on this CPU")
        else:
            plans.append(Plan(manifest_file, manifest, served_batch_sizes(manifest, options),
                              [Measured(dict(c)) for c in [{}] + candidates]))
    return plans, skipped


Progress = Callable[[int, int, str], None]


def measure(plans: list[Plan], options: BenchOptions, progress: Progress | None = None) -> None:
    """Interleaved rounds of every artifact under every candidate; fills each plan's ``measured``.
    The golden check runs in the first round; a rejected candidate is not run again."""
    from qexport.runtimes.harness import WorkerFailure, run_settings_worker

    cores = options.pinned_cores()
    total = options.rounds * sum(len(plan.measured) for plan in plans)
    done = 0
    for round_index in range(options.rounds):
        for plan in plans:
            for index, current in enumerate(plan.measured):
                done += 1
                if current.problem or (index and plan.measured[0].problem):
                    continue
                if progress:
                    progress(done, total, f"round {round_index + 1}/{options.rounds} {plan.manifest.family} "
                                          f"{describe(current.settings)}")
                outcome = run_settings_worker(plan.manifest_file, plan.manifest, current.settings, options, cores,
                                              plan.batch_sizes, golden=round_index == 0)
                plan.measured[index] = after_round(current, outcome, plan.manifest, isinstance(outcome, WorkerFailure))


def after_round(current: Measured, outcome, manifest: Manifest, failed: bool) -> Measured:
    """The candidate with this round's p50s added, or rejected with the reason."""
    if failed:
        return Measured(current.settings, current.round_p50_ms, f"its worker failed: {outcome.reason}")
    if outcome.golden_ok is False:
        return Measured(current.settings, current.round_p50_ms,
                        f"changes results beyond the golden tolerance (max |Δ| {outcome.golden_max_diff:.3g} > "
                        f"atol {manifest.golden.atol:g})")
    rounds = {batch: [*current.round_p50_ms.get(batch, []), stats.p50_ms] for batch, stats in
              ((int(b), s) for b, s in outcome.batches.items())}
    return Measured(current.settings, rounds)


def choices(plan: Plan) -> list[Choice]:
    """Each batch size's choice for one measured artifact (none when its defaults could not run)."""
    defaults, candidates = plan.measured[0], plan.measured[1:]
    if defaults.problem:
        return []
    return [choose(defaults, candidates, batch) for batch in plan.batch_sizes]


@dataclass(frozen=True)
class TuneOptions:
    """How `qexport tune` measures (the rest -- threads, cores, timeout -- as `qexport bench`)."""

    batch_sizes: tuple[int, ...] = option((1, 32), "--batch-sizes", "Comma-separated batch sizes to tune for "
                                          "(each gets its own settings).")
    rounds: int = option(5, "--rounds", "Rounds, each running every artifact under the defaults and under each "
                         "candidate in fresh pinned workers; a candidate is kept only when its paired 95 % interval "
                         "lies above 1, which needs at least 2.")
    min_seconds: float = option(0.3, "--min-seconds", "Minimum timed seconds per worker and batch size.")


@dataclass(frozen=True)
class TuneRow:
    """One artifact at one batch size: the defaults against what tuning kept, and every trial."""

    family: str
    file: str
    runtime: str
    batch_size: int
    defaults_p50_ms: float | None
    tuned_p50_ms: float | None
    settings: dict[str, str]
    how: list[str]                 # the kept settings as a team applies them
    speedup: Interval | None
    trials: list[Trial]
    problem: str = ""              # why the artifact could not be tuned (its defaults failed)


def rows_for(plan: Plan, made: list[Choice]) -> list[TuneRow]:
    """The report's rows for one measured artifact and its choices (:func:`choices`)."""
    from qexport.runtimes.settings import how_to_apply
    from qexport.runtimes.stats import geometric_interval

    m, defaults = plan.manifest, plan.measured[0]
    if defaults.problem:
        return [TuneRow(m.family, m.artifact.file, m.runtime.name, batch, None, None, {}, [], None, [],
                        problem=defaults.problem) for batch in plan.batch_sizes]
    rows = []
    for choice in made:
        kept = next((c for c in plan.measured if c.settings == choice.settings), defaults)
        rows.append(TuneRow(m.family, m.artifact.file, m.runtime.name, choice.batch_size,
                            geometric_interval(defaults.round_p50_ms[choice.batch_size]).estimate,
                            geometric_interval(kept.round_p50_ms[choice.batch_size]).estimate,
                            choice.settings, how_to_apply(m.runtime.name, choice.settings), choice.speedup,
                            choice.trials))
    return rows
