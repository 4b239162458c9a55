"""TorchScript artifacts (fp32, fp16, eager-mode int8) via ``torch.jit.load``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qexport.core.errors import QExportError
from qexport.runtimes.base import Runner, load_failure_message


def set_torch_threads(threads: int | None) -> None:
    """Intra- and inter-op pools; the inter-op size can only be set before any parallel work."""
    if not threads:
        return
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already fixed by earlier work in this process (not in a fresh worker)
        pass


class TorchTensorRunner(Runner):
    """numpy ↔ torch tensors and the report fields shared by every runtime that runs on torch."""

    device: str = "cpu"

    def prepare(self, batch: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device)

    def to_numpy(self, output: torch.Tensor) -> np.ndarray:
        return output.detach().float().cpu().numpy()

    def describe(self) -> dict:
        return {"runtime": self.runtime, "version": torch.__version__, "device": self.device,
                "threads": torch.get_num_threads()}


class TorchScriptRunner(TorchTensorRunner):
    runtime = "torchscript"

    def __init__(self, module: torch.jit.ScriptModule, device: str, path: Path):
        self.module, self.device, self.path = module, device, path

    @classmethod
    def load(cls, path, *, device="cpu", threads=None, hints=None, settings=None):
        set_torch_threads(threads)
        engine = hints.quantized_engine if hints else None
        if engine:  # int8 kernels dispatch on this global at run time, not at save time
            torch.backends.quantized.engine = engine
        try:
            module = torch.jit.load(str(path), map_location=device)
        except Exception as err:  # torch raises RuntimeError/ValueError/... for bad files
            raise QExportError(load_failure_message(path, cls.runtime, err)) from err
        module.eval()
        return cls(module, device, Path(path))

    def run_native(self, native: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.module(native)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return out

    def describe(self) -> dict:
        return {**super().describe(), "quantized_engine": torch.backends.quantized.engine}
