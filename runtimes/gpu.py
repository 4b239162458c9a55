"""What the GPU runtimes share: this host's GPU facts for their requirements, and a call timed by
CUDA events that returns only when the GPU has finished it.

The facts are read without initialising CUDA (torch counts devices through NVML), so build
processes started later can still use the GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

from qexport.core.envinfo import gpu_info, package_versions
from qexport.core.gpu_needs import HostGpu

T = TypeVar("T")


@lru_cache(maxsize=None)
def host_gpu(distributions: tuple[str, ...]) -> HostGpu:
    """This host's GPUs, torch's CUDA build and which of ``distributions`` are installed."""
    try:
        import torch
    except ImportError:  # verify where only onnxruntime is installed
        cuda, visible = None, 0
    else:
        cuda = torch.version.cuda
        visible = torch.cuda.device_count() if cuda else 0
    installed = frozenset(name for name, version in package_versions(distributions).items() if version)
    return HostGpu(tuple(gpu_info()), cuda, visible, installed)


def synchronised(launch: Callable[[], T]) -> tuple[T, float]:
    """Run ``launch`` (GPU work enqueued on torch's current stream) between two CUDA events and wait
    for the second: its result, and the GPU milliseconds between the events."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    result = launch()
    end.record()
    end.synchronize()
    return result, start.elapsed_time(end)


def describe_gpu() -> dict:
    """The GPU a runner runs on, for reports: name, compute capability, CUDA version."""
    import torch

    major, minor = torch.cuda.get_device_capability()
    return {"gpu": torch.cuda.get_device_name(), "compute_capability": f"{major}.{minor}", "cuda": torch.version.cuda}
