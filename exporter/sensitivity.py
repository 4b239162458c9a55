"""Which layers int8 hurts most, ranked in torch before any backend rebuilds: the accuracy
budget's fallback keeps the top of this ranking in float (exporter/budget_search.py).

With every convolution/linear layer fake-quantized the way the x86 backends quantize it
(per-channel int8 weights, per-tensor uint8 input over the calibration range), each layer in turn
goes back to float and is scored by how much logit error that removes. It is a proxy -- each
backend folds, fuses and quantizes other ops differently -- which is why every rebuild is
measured again in its own runtime rather than trusted. Also here: each layer's weights and
multiply-accumulates, for the manifest's int8 shares.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from qexport.training.data import Split, normalize
from qexport.exporter.registry import BuildContext
from qexport.core.progress import say

LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
RANKING_SAMPLES = 128      # held-out images each layer's sensitivity is scored on
RANGE_SAMPLES = 256        # calibration images the input ranges come from
RANKING = ("leave-one-out in torch: every convolution/linear layer fake-quantized (per-channel int8 weights, "
           "per-tensor uint8 input over the calibration range), each put back in float in turn; most first by how "
           f"much that lowers the mean squared logit error against fp32 on {RANKING_SAMPLES} held-out images")

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
