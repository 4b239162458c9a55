"""The accuracy budget every int8 family is held to, and the per-layer fallback that meets it.

The drop is measured on train images held out from calibration -- never on the test split, which
stays untouched for the reported accuracy -- in the artifact's own runtime (``build.py`` runs the
search). A family over budget that can keep chosen layers in float (``Family.fallback``) is rebuilt
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
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
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
MEASURED_ON = "train split, held out from calibration (never the test split)"
# QAT fine-tunes on the whole train split, so its held-out images are not unseen: said, not hidden.
MEASURED_ON_FINE_TUNED = ("train split, held out from calibration but seen by the QAT fine-tune (never the test "
                          "split): an optimistic drop")
RANKING = ("leave-one-out in torch: every convolution/linear layer fake-quantized (per-channel int8 weights, "
           "per-tensor uint8 input over the calibration range), each put back in float in turn; most first by how "
           f"much that lowers the mean squared logit error against fp32 on {RANKING_SAMPLES} held-out train images")


def budget_split(data, options: BuildOptions) -> Split:
    """The next ``budget_samples`` train images of the seeded permutation whose head is the
    calibration subset (``data.calibration_split``): disjoint from calibration by construction."""
    return seeded_subset(data.train, options.budget_samples, options.seed, skip=options.calibration_samples)


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

    def record(self, attempts: list[BudgetAttempt], kept_float: tuple[str, ...], shares: bool,
               fine_tuned: bool = False) -> AccuracyBudget:
        """The manifest's budget section for the last of ``attempts`` (``shares``: the family
        quantizes every convolution/linear layer it does not keep in float; ``fine_tuned``: a QAT
        family, which trained on these images)."""
        from qexport.train import top1

        last, options = attempts[-1], self.ctx.options
        weight_share, mac_share = int8_shares(self.costs, kept_float) if shares else (None, None)
        return AccuracyBudget(
            max_drop_pt=options.max_accuracy_drop, measured_on=MEASURED_ON_FINE_TUNED if fine_tuned else MEASURED_ON,
            samples=len(self.split),
            seed=options.seed, fp32_top1=top1(self.fp32_logits, self.split.labels), top1=last.top1,
            drop_pt=last.drop_pt, met=last.drop_pt <= options.max_accuracy_drop, kept_float=list(kept_float),
            drop_ci95_pt=last.drop_ci95_pt,
            int8_weight_share=weight_share, int8_mac_share=mac_share, attempts=attempts,
            ranking=RANKING if kept_float else "")


def over_budget_message(key: str, budget: AccuracyBudget, can_fall_back: bool, layers: int) -> str:
    """One sentence: what was lost, against what, what was tried, and what the user can do."""
    lost = (f"{key} loses {budget.drop_pt:.2f} top-1 points against fp32 on {budget.samples} held-out train images, "
            f"over --max-accuracy-drop {budget.max_drop_pt:g}")
    if not can_fall_back:
        tried = "; this family cannot keep single layers in float"
    elif budget.kept_float:
        tried = f" even with the {len(budget.kept_float)} most sensitive of {layers} layers in float"
    else:
        tried = f"; with {layers} quantizable layer(s) there is none to keep in float"
    return f"{lost}{tried} -- raise the budget, use a QAT family, or leave {key} out."


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
