"""The accuracy budget every int8 family is held to, and the per-layer fallback that meets it.

The drop is measured on the validation split -- images the fp32 model never trained on, set aside
by ``qexport train`` or named by the user -- or, for a checkpoint without one, on train images held
out from calibration (said to be optimistic); never on the test split, which stays untouched for
the reported accuracy. It is measured in the artifact's own runtime (``budget_search.py`` runs the
search), and judged by the upper end of its paired 95 % interval: "met" promises the artifact
plausibly loses no more than the budget, not only that the estimate does. A family over budget that can keep chosen layers in float (``Family.fallback``) is rebuilt
with the layers whose quantization hurts most left in float: the 1, 2, 4, ... most sensitive, so
the search ends after at most log2(layers) rebuilds. A family that still misses, or cannot fall
back, fails with the numbers and writes nothing.

The ranking is computed once per build run, in torch, and only when some family misses: with
every convolution/linear layer fake-quantized the way the x86 backends quantize it (per-channel
int8 weights, per-tensor uint8 input over the calibration range), each layer in turn goes back to
float and is scored by how much logit error that removes. It is a proxy -- each backend folds,
fuses and quantizes other ops differently -- which is why every rebuild is measured again in its
own runtime rather than trusted.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from functools import cached_property

import torch
from torch import nn

from qexport.data import Split, normalize, seeded_subset
from qexport.exporter.registry import BuildContext, BuildOptions
from qexport.manifest import AccuracyBudget, BudgetAttempt
from qexport.progress import say

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
RANKING_SAMPLES = 128      # held-out images each layer's sensitivity is scored on
RANGE_SAMPLES = 256        # calibration images the input ranges come from
MEASURED_ON_VALIDATION = "validation split: {source} (never trained on, never the test split)"
MEASURED_ON_TRAIN = ("train split, held out from calibration but trained on by the fp32 model (never the test "
                     "split): likely an optimistic drop -- give a validation split (--val-dir)")
# QAT fine-tunes on the train split, so its held-out train images are not unseen: said, not hidden.
MEASURED_ON_FINE_TUNED = ("train split, held out from calibration but seen by the QAT fine-tune (never the test "
                          "split): an optimistic drop")
RANKING = ("leave-one-out in torch: every convolution/linear layer fake-quantized (per-channel int8 weights, "
           "per-tensor uint8 input over the calibration range), each put back in float in turn; most first by how "
           f"much that lowers the mean squared logit error against fp32 on {RANKING_SAMPLES} held-out images")
TYPICAL_CHANGED = 0.05  # share of images an int8 model gets right where fp32 is wrong or back: the resolution shown


class Verdict(str, Enum):
    """How a measured drop compares with the budget, given its 95 % interval."""

    MET = "met"                                 # the interval's upper end is within the budget
    ESTIMATE_ONLY = "met on the estimate only"  # the estimate is, the upper end is not: the images cannot tell
    MISSED = "missed"                           # the estimate itself is over


def judge(drop_pt: float, ci95_pt: float | None, budget_pt: float) -> Verdict:
    """The verdict on a drop of ``drop_pt`` ± ``ci95_pt`` top-1 points against ``budget_pt``."""
    if drop_pt + (ci95_pt or 0.0) <= budget_pt:
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
            f"the estimate, but the interval reaches {attempt.drop_pt + (attempt.drop_ci95_pt or 0):.2f} pt -- "
            f"{images} images cannot resolve it")


def budget_split(data, options: BuildOptions) -> Split:
    """The images the budget is measured on: ``budget_samples`` of the validation split, or --
    without one -- the next ``budget_samples`` train images of the seeded permutation whose head is
    the calibration subset (``data.calibration_split``): disjoint from calibration by construction."""
    if data.validation is not None:
        return seeded_subset(data.validation, options.budget_samples, options.seed)
    return seeded_subset(data.train, options.budget_samples, options.seed, skip=options.calibration_samples)


def measured_on(data, fine_tuned: bool) -> str:
    """Where the drop was measured, for the manifest: unseen images, or training images said to be optimistic."""
    if data.validation is not None:
        return MEASURED_ON_VALIDATION.format(source=data.validation_source)
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


def quantizable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The layers int8 backends quantize, by qualified module name (the name every fallback uses)."""
    return {name: module for name, module in model.named_modules() if isinstance(module, LAYER_TYPES)}


@dataclass(frozen=True)
class LayerCost:
    weights: int
    macs: int  # multiply-accumulates for one image


def layer_costs(model: nn.Module, example: torch.Tensor) -> dict[str, LayerCost]:
    """Weights and per-image MACs of every quantizable layer, from one forward pass."""
    costs: dict[str, LayerCost] = {}

    def record(name: str):
        def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
            per_output = module.weight[0].numel()  # in_channels/groups x kernel, or in_features
            costs[name] = LayerCost(module.weight.numel(), output[:1].numel() * per_output)
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in quantizable_layers(model).items()]
    try:
        with torch.no_grad():
            model(example[:1])
    finally:
        for handle in handles:
            handle.remove()
    return costs


def int8_shares(costs: dict[str, LayerCost], kept_float: tuple[str, ...]) -> tuple[float, float]:
    """Share of quantizable weights and of their MACs still int8 once ``kept_float`` stay float."""
    int8 = [cost for name, cost in costs.items() if name not in kept_float]
    weights, macs = sum(c.weights for c in costs.values()), sum(c.macs for c in costs.values())
    return (round(sum(c.weights for c in int8) / weights, 4) if weights else 0.0,
            round(sum(c.macs for c in int8) / macs, 4) if macs else 0.0)


def input_ranges(model: nn.Module, layers: dict[str, nn.Module], batches: Iterator[torch.Tensor]) -> dict[str, tuple[float, float]]:
    """Min/max of each layer's input over calibration images: what a min-max observer sees."""
    ranges: dict[str, tuple[float, float]] = {}

    def record(name: str):
        def hook(_module, inputs) -> None:
            low, high = float(inputs[0].min()), float(inputs[0].max())
            seen = ranges.get(name, (low, high))
            ranges[name] = (min(seen[0], low), max(seen[1], high))
        return hook

    handles = [module.register_forward_pre_hook(record(name)) for name, module in layers.items()]
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch)
    finally:
        for handle in handles:
            handle.remove()
    return ranges


class FakeQuantized:
    """``layer`` computing as an x86 int8 kernel would -- per-channel symmetric int8 weights and a
    per-tensor asymmetric uint8 input over ``value_range``, rounded and dequantized -- while
    switched on; the float weights come back when switched off or removed."""

    def __init__(self, layer: nn.Module, value_range: tuple[float, float]):
        low, high = min(value_range[0], 0.0), max(value_range[1], 0.0)
        self.scale = max((high - low) / 255, 1e-8)
        self.zero_point = int(min(max(round(-low / self.scale), 0), 255))
        self.layer, self.float_weight = layer, layer.weight.data
        channel_scale = self.float_weight.abs().amax(dim=tuple(range(1, self.float_weight.dim()))).clamp(min=1e-12) / 127
        self.int8_weight = torch.fake_quantize_per_channel_affine(
            self.float_weight, channel_scale, torch.zeros_like(channel_scale, dtype=torch.int32), 0, -128, 127)
        self.on = False
        self.handle = layer.register_forward_pre_hook(self._quantize_input)

    def _quantize_input(self, _module, inputs):
        if not self.on:
            return None
        return (torch.fake_quantize_per_tensor_affine(inputs[0], self.scale, self.zero_point, 0, 255),) + inputs[1:]

    def switch(self, on: bool) -> None:
        self.on = on
        self.layer.weight.data = self.int8_weight if on else self.float_weight

    def remove(self) -> None:
        self.switch(False)
        self.handle.remove()


@contextlib.contextmanager
def fake_quantized(layers: dict[str, nn.Module], ranges: dict[str, tuple[float, float]]) -> Iterator[dict[str, FakeQuantized]]:
    """Every layer in ``layers`` fake-quantized (switched on); all restored on exit."""
    quantized = {name: FakeQuantized(layer, ranges.get(name, (0.0, 0.0))) for name, layer in layers.items()}
    try:
        for fake in quantized.values():
            fake.switch(True)
        yield quantized
    finally:
        for fake in quantized.values():
            fake.remove()


def rank_layers(ctx: BuildContext, split: Split) -> list[str]:
    """Quantizable layers, the one whose return to float helps most first.

    Leave-one-out, as accuracy-aware tuners rank (NNCF's accuracy control, Intel Neural
    Compressor): with every layer fake-quantized, each layer in turn goes back to float and is
    scored by how much that lowers the squared logit error against fp32 -- which counts what a
    layer's quantization does to the layers after it, not only its own error.
    """
    model = ctx.fresh_model()
    layers = quantizable_layers(model)
    say(f"  ranking {len(layers)} layers by what keeping each in float recovers ({min(len(split), RANKING_SAMPLES)} "
        "held-out images)…")
    calibration = ctx.calibration_batches()
    ranges = input_ranges(model, layers, (batch for _, batch in zip(range(RANGE_SAMPLES // 64), calibration)))
    images = normalize(split.images[:RANKING_SAMPLES], ctx.data.mean, ctx.data.std)
    with torch.no_grad():
        reference = model(images)
        with fake_quantized(layers, ranges) as quantized:
            error = lambda: float(((model(images) - reference) ** 2).mean())  # noqa: E731
            everything = error()
            recovered = {}
            for name, fake in quantized.items():
                fake.switch(False)
                recovered[name] = everything - error()
                fake.switch(True)
    return sorted(recovered, key=lambda name: recovered[name], reverse=True)


class HeldOut:
    """The budget's images and what is computed on them once per build run: the fp32 model's
    logits, and -- only when a family misses the budget -- the layer ranking and layer costs."""

    def __init__(self, ctx: BuildContext):
        self.ctx = ctx
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
        from qexport.train import top1

        fp32, quantized = top1(self.fp32_logits, self.split.labels), top1(logits, self.split.labels)
        return BudgetAttempt(kept_float=kept_float, top1=quantized, drop_pt=round((fp32 - quantized) * 100, 4),
                             drop_ci95_pt=paired_drop_ci95_pt(self.fp32_logits, logits, self.split.labels))

    @property
    def unseen(self) -> bool:
        return self.ctx.data.validation is not None

    def resolution_problem(self) -> str | None:
        options = self.ctx.options
        return resolution_problem(len(self.split), options.max_accuracy_drop, options.budget_verdict)

    def verdict(self, attempt: BudgetAttempt) -> Verdict:
        return judge(attempt.drop_pt, attempt.drop_ci95_pt, self.ctx.options.max_accuracy_drop)

    def accepts(self, attempt: BudgetAttempt) -> bool:
        """Whether ``attempt`` ships under the build's --budget-verdict rule (the fallback's stop, too)."""
        return accepted(self.verdict(attempt), self.ctx.options.budget_verdict)

    def record(self, attempts: list[BudgetAttempt], kept_float: tuple[str, ...], shares: bool,
               fine_tuned: bool = False) -> AccuracyBudget:
        """The manifest's budget section for the last of ``attempts`` (``shares``: the family
        quantizes every convolution/linear layer it does not keep in float; ``fine_tuned``: a QAT
        family, which trained on the train split)."""
        from qexport.train import top1

        last, options = attempts[-1], self.ctx.options
        weight_share, mac_share = int8_shares(self.costs, kept_float) if shares else (None, None)
        return AccuracyBudget(
            max_drop_pt=options.max_accuracy_drop, measured_on=measured_on(self.ctx.data, fine_tuned),
            samples=len(self.split),
            seed=options.seed, fp32_top1=top1(self.fp32_logits, self.split.labels), top1=last.top1,
            drop_pt=last.drop_pt, met=self.accepts(last), kept_float=list(kept_float),
            drop_ci95_pt=last.drop_ci95_pt,
            int8_weight_share=weight_share, int8_mac_share=mac_share, attempts=attempts,
            ranking=RANKING if kept_float else "", verdict=self.verdict(last).value, rule=options.budget_verdict,
            unseen=self.unseen)


def over_budget_message(key: str, budget: AccuracyBudget, can_fall_back: bool, layers: int) -> str:
    """One sentence: what was lost, against what, what was tried, and what the user can do."""
    unresolved = budget.verdict == Verdict.ESTIMATE_ONLY.value
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
    return f"{lost}{tried} -- raise the budget, use a QAT family{more}, or leave {key} out."


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
