"""The accuracy budget's search: build, measure the drop in the artifact's own runtime, and --
for a family that can keep layers in float -- rebuild with the 1, 2, 4, ... most sensitive layers
in float until the budget's verdict accepts it (exporter/budget.py says what "met" means). A
family that still misses raises, so nothing over budget is ever written."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

from qexport.exporter.budget import (HeldOut, Verdict, fallback_sizes, measured_on, not_found_note, over_budget_message,
                                     unresolved_line)
from qexport.exporter.isolation import run_family
from qexport.exporter.measure import Runner, runner_logits
from qexport.exporter.registry import BuildContext, BuildDetails, Family
from qexport.core.build_records import AccuracyBudget, BudgetAttempt, OverBudget
from qexport.core.progress import say


def build_within_budget(family: Family, ctx: BuildContext, path: Path, held_out: HeldOut,
                        cancelled: threading.Event) -> tuple[BuildDetails, AccuracyBudget | None, Runner | None]:
    """Build ``family`` into ``path``; an int8 family is held to ``--max-accuracy-drop``.

    Also returns the runner that measured the file last, still loaded, so the test-split measurement
    reuses it: an IPEX runner is an interpreter that spends 12 s importing IPEX."""
    details = run_family(family, ctx, path, cancelled)
    if not family.is_int8:
        return details, None, None
    if not len(held_out.split):
        details.notes.append(f"Accuracy budget not checked: the train split has no images beyond the "
                             f"{ctx.shared.calibration_samples} used for calibration.")
        return details, None, None
    if not held_out.unseen:
        say(f"  budget measured on the {measured_on(ctx.data, family.fine_tuned)}")
    attempt, runner = measure_attempt(family, path, details, held_out, ctx, 0)
    attempts, kept = [attempt], ()
    if not held_out.accepts(attempts[-1]) and family.fallback:
        for size in fallback_sizes(len(held_out.ranking)):
            asked = tuple(held_out.ranking[:size])
            say(f"  {attempts[-1].drop_pt:.2f} ± {attempts[-1].drop_ci95_pt or 0:.2f} pt lost (budget "
                f"{held_out.budget.max_accuracy_drop:g}): rebuilding with the {size} most sensitive layers in float")
            details = run_family(family, replace(ctx, keep_float=asked), path, cancelled)
            found = tuple(layer for layer in asked if layer not in details.float_not_found)
            if not found:  # rebuilding again would build the same artifact again
                missed = held_out.record(attempts, kept, shares=family.fallback, fine_tuned=family.fine_tuned)
                raise OverBudget(nothing_to_keep_message(family, attempts[-1], held_out.budget.max_accuracy_drop, size,
                                                         asked), missed)
            kept = found
            attempt, runner = measure_attempt(family, path, details, held_out, ctx, len(kept))
            attempts.append(attempt)
            if held_out.accepts(attempts[-1]):
                break
    details.notes.extend(not_found_note(details.float_not_found))
    budget = held_out.record(attempts, kept, shares=family.fallback, fine_tuned=family.fine_tuned)
    if not budget.met:
        raise OverBudget(over_budget_message(family.key, budget, family.fallback, len(held_out.costs),
                                             family.fine_tuned), budget)
    return details, budget, runner


def measure_attempt(family: Family, path: Path, details: BuildDetails, held_out: HeldOut, ctx: BuildContext,
                    kept_float: int) -> tuple[BudgetAttempt, Runner]:
    """The drop of the file at ``path`` on the budget's images, in its own runtime, and the runner
    that measured it; a drop under the budget that its interval cannot confirm is said in one line."""
    runner, logits = runner_logits(family, path, details, held_out.split, ctx.data)
    attempt = held_out.attempt(logits, kept_float)
    if held_out.verdict(attempt) is Verdict.ESTIMATE_ONLY:
        say(f"  {unresolved_line(attempt, held_out.budget.max_accuracy_drop, len(held_out.split))}")
    return attempt, runner


def nothing_to_keep_message(family: Family, last: BudgetAttempt, limit: float, size: int, asked: tuple[str, ...]) -> str:
    return (f"{family.key} loses {last.drop_pt:.2f} ± {last.drop_ci95_pt or 0:.2f} top-1 points, not within "
            f"--max-accuracy-drop {limit:g}, and none of "
            f"the {size} layers to keep in float ({asked[0]}, ...) is named in its graph, so its fallback cannot "
            f"help -- raise the budget or leave {family.key} out.")
