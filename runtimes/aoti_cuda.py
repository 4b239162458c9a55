"""AOTInductor packages compiled for CUDA (``.pt2``), loaded by ``torch._inductor.aoti_load_package``
on the GPU; each call is timed by CUDA events and returns when the GPU has finished it."""

from __future__ import annotations

import torch

from qexport.runtimes.aoti import AOTInductorRunner
from qexport.runtimes.gpu import describe_gpu, synchronised


class AOTInductorCudaRunner(AOTInductorRunner):
    runtime = "aoti-cuda"

    @classmethod
    def load(cls, path, **options):
        runner = super().load(path, **{**options, "device": "cuda"})  # its kernels run only there
        runner.gpu_ms = None
        return runner

    def run_native(self, native: torch.Tensor) -> torch.Tensor:
        output, self.gpu_ms = synchronised(lambda: super(AOTInductorCudaRunner, self).run_native(native))
        return output

    def describe(self) -> dict:
        return {**super().describe(), **describe_gpu()}
