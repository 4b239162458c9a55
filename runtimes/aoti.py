"""AOTInductor packages (``.pt2``) via ``torch._inductor.aoti_load_package``: no model code."""

from __future__ import annotations

import platform

import torch

from qexport.core.errors import QExportError
from qexport.core.manifest import CompiledWith
from qexport.runtimes.base import load_failure_message
from qexport.runtimes.torchscript import TorchTensorRunner, set_torch_threads


class AOTInductorRunner(TorchTensorRunner):
    runtime = "aoti"

    def __init__(self, package, device: str):
        self.package, self.device = package, device

    @classmethod
    def load(cls, path, *, device="cpu", threads=None, hints=None, settings=None):
        check_compatible(hints.compiled_with if hints else None)
        set_torch_threads(threads)
        try:
            package = torch._inductor.aoti_load_package(str(path))
        except Exception as err:  # bad zip, missing .so, ABI mismatch...
            raise QExportError(load_failure_message(path, cls.runtime, err)) from err
        return cls(package, device)

    def run_native(self, native: torch.Tensor) -> torch.Tensor:
        """Calls the compiled model's loader with the flat tensor list it takes. The package's own
        ``__call__`` re-parses both pytree specs from JSON and flattens the arguments on every call,
        Python work that is a measurable share of a ResNet18 int8 call at batch 1."""
        with torch.inference_mode():
            return self.package.loader.boxed_run([native])[0]


def check_compatible(built: CompiledWith | None) -> None:
    """AOTInductor code is compiled C++ for one torch version and one CPU ISA: refuse clearly."""
    if built is None:  # measured at build time, right where it was compiled
        return
    torch_built = built.torch
    if torch_built and torch_built.split("+")[0] != torch.__version__.split("+")[0]:
        raise QExportError(
            f"This AOTInductor package was compiled with torch {torch_built} but torch {torch.__version__} is "
            "installed; load it with that exact torch version or rebuild it here."
        )
    machine = built.machine
    if machine and machine != platform.machine():
        raise QExportError(f"This AOTInductor package was compiled for {machine}, not {platform.machine()}; rebuild it here.")
