"""A family declared outside qexport, as docs/ARCHITECTURE.md's "Adding a family" walks through:
one module, one frozen config, one decorated build function. ``tests/test_toy_family.py`` imports
it and builds it, so the walk-through cannot drift from what ``register`` accepts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qexport.exporter.registry import BuildContext, BuildDetails, register
from qexport.core.manifest import Precision
from qexport.core.options import FamilyConfig, option


@dataclass(frozen=True)
class ToyConfig(FamilyConfig):
    """The toy's own option: it has no command-line flag, so every build uses its default."""

    temperature: float = option(2.0, None, "Logits are divided by this before the file returns them.")


class Tempered(nn.Module):
    def __init__(self, model: nn.Module, temperature: float):
        super().__init__()
        self.model, self.temperature = model, temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) / self.temperature


@register("toy-fp32", variant="toy-fp32", format="torchscript", extension=".torchscript.pt",
          precision=Precision.FP32, runtime="torchscript", method="logits / temperature, trace + freeze",
          config=ToyConfig)
def build_toy(ctx: BuildContext, config: ToyConfig, path: Path) -> BuildDetails:
    with torch.no_grad():
        traced = torch.jit.freeze(torch.jit.trace(Tempered(ctx.fresh_model(), config.temperature), ctx.example).eval())
    torch.jit.save(traced, str(path))
    return BuildDetails(config={"temperature": config.temperature})
