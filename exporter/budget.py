"""The accuracy budget every int8 family is held to, and the per-layer fallback that meets it.

The drop is measured on the validation split -- images the fp32 model never trained on, set aside
by ``qexport train`` or named by the user -- or, for a checkpoint without one, on train images held
out from calibration (said to be optimistic); never on the test split, which stays untouched for
the reported accuracy. It is measured in the artifact's own runtime (``budget_search.py`` runs the
search), and judged by the upper end of its paired 95 % interval: "met" promises the artifact
plausibly loses no more than the budget, not only that the estimate does.

A family over budget that can keep chosen layers in float (``Family.fallback``) is rebuilt with
the layers whose quantization hurts most (``sensitivity.py``) left in float: the 1, 2, 4, ... most
sensitive, so the search ends after at most log2(layers) rebuilds. A family that still misses, or
cannot fall back, fails with the numbers and writes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import cached_property

import torch

from qexport.training.data import Split, seeded_subset
from qexport.core.options import BudgetConfig, BuildOptions
from qexport.exporter.registry import BuildContext
from qexport.exporter.sensitivity import RANKING, LayerCost, int8_shares, layer_costs, rank_layers
from qexport.core.build_records import AccuracyBudget, BudgetAttempt, Verdict, drop_upper_pt

MEASURED_ON_VALIDATION = "validation split: {source} (never trained on, never the test split)"
MEASURED_ON_EARLIER_STAGE = ("validation split: {source} (never the test split): likely an optimistic drop -- "
                             "give a validation split no training stage saw (--val-dir)")
MEASURED_ON_TRAIN = ("train split, held out from calibration but trained on by the fp32 model (never the test "
                     "split): likely an optimistic drop -- give a validation split (--val-dir)")
# QAT fine-tunes on the train split, so its held-out train images are not unseen: said, not hidden.
MEASURED_ON_FINE_TUNED = ("train split, held out from calibration but seen by the QAT fine-tune (never the test "
                          "split): an optimistic drop")
TYPICAL_CHANGED = 0.05  # share of images an int8 model gets right where fp32 is wrong or back: the resolution shown


def judge(drop_pt: float, ci95_pt: float | None, budget_pt: float) -> Verdict:
    """The verdict on a drop of ``drop_pt`` ± ``ci95_pt`` top-1 points against ``budget_pt``."""
    if drop_upper_pt(drop_pt, ci95_pt) <= budget_pt:
        return Verdict.MET
    return Verdict.ESTIMATE_ONLY if drop_pt <= budget_pt else Verdict.MISSED


def accepted(verdict: Verdict, rule: str) -> bool:
    """Whether ``verdict`` lets an artifact ship under --budget-verdict ``rule``: "interval" (the
    default) accepts only MET; "estimate" also accepts a drop whose interval reaches over."""
    return verdict is Verdict.MET or (rule == "estimate" and verdict is Verdict.ESTIMATE_ONLY)


def one_change_upper_pt(images: int) -> float:
    """The upper end of the drop's interval when a single one of ``images`` changes correctness:
    d has one 1 and n-1 zeros, so the drop is 100/n and its half-width 1.96 * 100/n."""
    return 296.0 / images


def typical_ci95_pt(images: int, changed: float = TYPICAL_CHANGED) -> float:
    """Half-width of the drop's interval on ``images`` where ``changed`` of them change correctness."""
    return 196.0 * math.sqrt(changed / images)


def resolution_problem(images: int, budget_pt: float, rule: str) -> str | None:
    """Why ``images`` cannot resolve ``budget_pt`` under the interval rule -- one image changing
    correctness would already put the interval over it -- or None."""
    if rule != "interval" or not images or one_change_upper_pt(images) <= budget_pt:
        return None
    fix = f"use at least {math.ceil(296.0 / budget_pt)} (a larger --val-dir or --budget-samples)" if budget_pt > 0 \
        else "a 0-pt budget can only be met by an artifact that changes no image"
    return (f"The accuracy budget has {images} images to be measured on, too few for a {budget_pt:g}-pt budget: "
            f"one image changing correctness would already put the drop's 95 % interval at "
            f"{one_change_upper_pt(images):.1f} pt (±{typical_ci95_pt(images):.1f} pt where "
            f"{TYPICAL_CHANGED:.0%} change); {fix}, raise --max-accuracy-drop, or pass --budget-verdict estimate.")


def unresolved_line(attempt: BudgetAttempt, budget_pt: float, images: int) -> str:
    """One line for a drop under the budget whose interval is not: the images cannot tell."""
    return (f"{attempt.drop_pt:.2f} ± {attempt.drop_ci95_pt or 0:.2f} pt lost: under the {budget_pt:g}-pt budget on "
            f"the estimate, but the interval reaches {attempt.upper_pt:.2f} pt -- "
            f"{images} images cannot resolve it")


def budget_split(data, options: BuildOptions) -> Split:
    """The images the budget is measured on: ``budget_samples`` of the validation split, or --
    without one -- the next ``budget_samples`` train images of the seeded permutation whose head is
    the calibration subset (``data.calibration_split``): disjoint from calibration by construction."""
    if data.validation is not None:
        return seeded_subset(data.validation, options.config_for(BudgetConfig).budget_samples, options.shared.seed)
    return seeded_subset(data.train, options.config_for(BudgetConfig).budget_samples, options.shared.seed,
                         skip=options.shared.calibration_samples)


def measured_on(data, fine_tuned: bool) -> str:
    """Where the drop was measured, for the manifest: unseen images, or training images said to be optimistic."""
    if data.validation is not None:
        template = MEASURED_ON_EARLIER_STAGE if data.validation_trained_on else MEASURED_ON_VALIDATION
        return template.format(source=data.validation_source)
    return MEASURED_ON_FINE_TUNED if fine_tuned else MEASURED_ON_TRAIN


def paired_drop_ci95_pt(fp32_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Half-width, in top-1 points, of the 95 % interval on the drop, paired per image.

    Both models score the same images, so the drop is the mean of d_i = fp32 right - int8 right
    (each -1, 0 or 1), and only images one model gets right and the other wrong add to its spread:
    where that is 10 % of the images the drop is known to about +-2.0 pt on 1000 images and +-0.9 pt
    on 5000 (2 %, a well-trained ResNet18: +-0.9 and +-0.4). That is the resolution a budget can be
    checked at -- said in the manifest next to the drop."""
    d = ((fp32_logits.argmax(1) == labels).double() - (logits.argmax(1) == labels).double())
    if len(d) < 2:  # no spread can be estimated from one image (and NaN is not JSON)
        return None
    return round(float(1.96 * d.std(unbiased=True) / len(d) ** 0.5) * 100, 4)


def fallback_sizes(layers: int) -> list[int]:
    """How many of the most sensitive layers each rebuild keeps in float: 1, 2, 4, ... below
    ``layers`` (keeping every layer in float would no longer be an int8 artifact)."""
    sizes, size = [], 1
    while size < layers:
        sizes.append(size)
        size *= 2
    return sizes


class HeldOut:
    """The budget's images and what is computed on them once per build run: the fp32 model's
    logits, and -- only when a family misses the budget -- the layer ranking and layer costs."""

    def __init__(self, ctx: BuildContext):
        self.ctx = ctx
        self.budget = ctx.options.config_for(BudgetConfig)  # the same answers for every int8 family
        self.split = budget_split(ctx.data, ctx.options)

    @cached_property
    def fp32_logits(self) -> torch.Tensor:
        return self.ctx.fp32_logits(self.split)

    @cached_property
    def ranking(self) -> list[str]:
        return rank_layers(self.ctx, self.split)

    @cached_property
    def costs(self) -> dict[str, LayerCost]:
        return layer_costs(self.ctx.fresh_model(), self.ctx.example)

    def attempt(self, logits: torch.Tensor, kept_float: int) -> BudgetAttempt:
        """The top-1 points ``logits`` lose against the fp32 model on these images, with the paired
        95 % interval (see :func:`paired_drop_ci95_pt`)."""
        from qexport.training.train import top1

        fp32, quantized = top1(self.fp32_logits, self.split.labels), top1(logits, self.split.labels)
        return BudgetAttempt(kept_float=kept_float, top1=quantized, drop_pt=round((fp32 - quantized) * 100, 4),
                             drop_ci95_pt=paired_drop_ci95_pt(self.fp32_logits, logits, self.split.labels))

    @property
    def unseen(self) -> bool:
        return self.ctx.data.validation is not None and not self.ctx.data.validation_trained_on

    def resolution_problem(self) -> str | None:
        return resolution_problem(len(self.split), self.budget.max_accuracy_drop, self.budget.budget_verdict)

    def verdict(self, attempt: BudgetAttempt) -> Verdict:
        return judge(attempt.drop_pt, attempt.drop_ci95_pt, self.budget.max_accuracy_drop)

    def accepts(self, attempt: BudgetAttempt) -> bool:
        """Whether ``attempt`` ships under the build's --budget-verdict rule (the fallback's stop, too)."""
        return accepted(self.verdict(attempt), self.budget.budget_verdict)

    def record(self, attempts: list[BudgetAttempt], kept_float: tuple[str, ...], shares: bool,
               fine_tuned: bool = False) -> AccuracyBudget:
        """The manifest's budget section for the last of ``attempts`` (``shares``: the family
        quantizes every convolution/linear layer it does not keep in float; ``fine_tuned``: a QAT
        family, which trained on the train split)."""
        from qexport.training.train import top1

        last, options = attempts[-1], self.budget
        weight_share, mac_share = int8_shares(self.costs, kept_float) if shares else (None, None)
        return AccuracyBudget(
            max_drop_pt=options.max_accuracy_drop, measured_on=measured_on(self.ctx.data, fine_tuned),
            samples=len(self.split),
            seed=self.ctx.shared.seed, fp32_top1=top1(self.fp32_logits, self.split.labels), top1=last.top1,
            drop_pt=last.drop_pt, met=self.accepts(last), kept_float=list(kept_float),
            drop_ci95_pt=last.drop_ci95_pt,
            int8_weight_share=weight_share, int8_mac_share=mac_share, attempts=attempts,
            ranking=RANKING if kept_float else "", verdict=self.verdict(last), rule=options.budget_verdict,
            unseen=self.unseen)


def over_budget_message(key: str, budget: AccuracyBudget, can_fall_back: bool, layers: int,
                        fine_tuned: bool = False) -> str:
    """One sentence: what was lost, against what, what was tried, and what the user can do (a QAT
    family is not told to use a QAT family)."""
    unresolved = budget.verdict is Verdict.ESTIMATE_ONLY
    images = "validation" if budget.unseen else "held-out train"
    lost = (f"{key} loses {budget.drop_pt:.2f} ± {budget.drop_ci95_pt or 0:.2f} top-1 points against fp32 on "
            f"{budget.samples} {images} images, ")
    lost += (f"under --max-accuracy-drop {budget.max_drop_pt:g} on the estimate only (the interval reaches "
             f"{budget.upper_pt:.2f}: these images cannot resolve the budget)"
             if unresolved else f"over --max-accuracy-drop {budget.max_drop_pt:g}")
    if not can_fall_back:
        tried = "; this family cannot keep single layers in float"
    elif budget.kept_float:
        tried = f" even with the {len(budget.kept_float)} most sensitive of {layers} layers in float"
    else:
        tried = f"; with {layers} quantizable layer(s) there is none to keep in float"
    more = ", give more validation images, or pass --budget-verdict estimate" if unresolved else ""
    remedy = "fine-tune longer (--qat-epochs)" if fine_tuned else "use a QAT family"
    return f"{lost}{tried} -- raise the budget, {remedy}{more}, or leave {key} out."


def ops_of_named_layers(ops: Iterable[tuple[str, str | None]], layers: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """Which graph ops compute the torch modules ``layers``, and the layers none computes.

    ``ops`` are (op name, name of its weight) pairs. Exporters name a weight after its parameter
    (``features.0.0.weight``); graph optimizers may prefix it (ONNX Runtime's Conv+BN fusion writes
    ``ConvBnFusion_W_features.0.0.weight``), so a weight ending in the parameter name after a
    separator matches too."""
    wanted = {f"{layer}.weight": layer for layer in layers}
    matched, found = [], set()
    for op, weight in ops:
        layer = next((wanted[w] for w in wanted if weight and (weight == w or weight.endswith(("_" + w, "/" + w)))), None)
        if layer is not None:
            matched.append(op)
            found.add(layer)
    return matched, [layer for layer in layers if layer not in found]


def not_found_note(missing: list[str]) -> list[str]:
    """A manifest note for layers the fallback asked to keep in float that this graph does not name."""
    return [f"Layers asked to stay float but not found in this graph (left int8): {', '.join(missing)}"] if missing else []
