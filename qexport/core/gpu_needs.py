"""What a GPU runtime needs from the host that builds or runs its artifacts -- an NVIDIA GPU that
torch sees, a CUDA build of torch and the runtime's package -- and whether this host has it.

Torch-free: the facts (:class:`HostGpu`) are read by ``qexport.runtimes.gpu.host_gpu`` and the
decision is made here, so it is tested with hand-made facts on a host without a GPU, as the CPU's
is with ``QEXPORT_FAKE_CPU_FLAGS``. A runtime declares its :class:`GpuRequirement` once
(``qexport.runtimes.RUNTIMES``); ``build --list``, ``build`` (a skip, like a missing CPU feature),
``bench`` and ``verify`` all say the same sentence.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HostGpu:
    """What this host offers a GPU runtime."""

    names: tuple[str, ...]      # the NVIDIA GPUs the driver reports (nvidia-smi); empty without one
    cuda: str | None            # the CUDA version torch was built with; None: a CPU build of torch, or no torch
    visible: int                # GPUs torch can use (0 where CUDA_VISIBLE_DEVICES hides them)
    installed: frozenset[str]   # the distributions installed, of those the requirements name


@dataclass(frozen=True)
class GpuRequirement:
    """An NVIDIA GPU, a CUDA build of torch and (``install``) the package that provides the runtime."""

    provided_by: tuple[str, ...]  # distributions any one of which provides the runtime
    install: str | None = None    # what a user installs, e.g. "torch-tensorrt==2.14.0"; None: torch alone
    note: str = ""                # how to install it, where plain pip is not enough

    @property
    def label(self) -> str:
        if not self.install:
            return "an NVIDIA GPU and a CUDA build of torch"
        return f"an NVIDIA GPU, a CUDA build of torch and `pip install {self.install}`{self.note}"

    def missing(self, host: HostGpu) -> str | None:
        """None when ``host`` has everything; else the first missing piece, as a clause."""
        if not host.names and not host.visible:
            return "this host has no NVIDIA GPU"
        if host.cuda is None:
            return "torch here is a build without CUDA"
        if not host.visible:
            return f"torch sees none of this host's GPUs ({', '.join(host.names)}): check CUDA_VISIBLE_DEVICES"
        if not host.installed & set(self.provided_by):
            return f"{self.provided_by[0]} is not installed"
        return None

    def problem(self, host: HostGpu) -> str | None:
        """None when met; else one sentence: 'needs X; this host has no NVIDIA GPU'."""
        missing = self.missing(host)
        return None if missing is None else f"needs {self.label}; {missing}"
