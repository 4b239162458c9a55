"""IPEX artifacts: TorchScript files whose kernels come from intel_extension_for_pytorch.

Only importable inside the IPEX environment (torch 2.8 + IPEX 2.8.0). IPEX must be imported
**before** ``torch.jit.load``: otherwise its fused int8 ops are not registered (30x slower) and
bf16 graphs fail to load.
"""

from __future__ import annotations

import intel_extension_for_pytorch as ipex  # noqa: F401  (must precede torch.jit.load)
import torch

from qexport.runtimes.torchscript import TorchScriptRunner


class IpexRunner(TorchScriptRunner):
    """IPEX rewrites a frozen graph into fused kernels during its first calls for each input
    shape, and the fused kernels round differently (int8 logits moved by up to 0.34 here).
    Every result this runner returns comes from the fused graph: a new shape is run twice first,
    as a deployment's warm-up would."""

    runtime = "ipex"
    WARM_CALLS = 2

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._warm_shapes: set[tuple[int, ...]] = set()

    def run_native(self, native: torch.Tensor) -> torch.Tensor:
        shape = tuple(native.shape)
        if shape not in self._warm_shapes:
            for _ in range(self.WARM_CALLS):
                super().run_native(native)
            self._warm_shapes.add(shape)
        return super().run_native(native)

    def describe(self) -> dict:
        return {**super().describe(), "runtime": self.runtime, "ipex_version": ipex.__version__}
