"""The fp16 model behind fp32 input and output, which torchscript-fp16 and pt2e-cuda-fp16 share:
callers feed the same float32 tensors as to every other artifact."""

from __future__ import annotations

import torch
from torch import nn


class HalfPrecision(nn.Module):
    """fp16 weights and compute with fp32 inputs/outputs, so callers feed the same tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()
