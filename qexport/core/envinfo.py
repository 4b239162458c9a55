"""Facts about the machine and libraries that every report prints next to its numbers."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

LIBRARIES = ("torch", "torchvision", "torchao", "onnx", "onnxruntime", "onnxscript",
             "intel-extension-for-pytorch", "openvino", "nncf", "numpy", "executorch", "timm")


def package_versions(packages) -> dict[str, str | None]:
    """Installed versions, read from package metadata so nothing heavy is imported (None: absent)."""
    versions: dict[str, str | None] = {}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def command_line() -> str:
    """How this process was started, as every report records it ('qexport bench artifacts/ --rounds 5')."""
    import shlex
    import sys

    return " ".join(shlex.quote(a) for a in ["qexport", *sys.argv[1:]])


def library_versions() -> dict[str, str | None]:
    return package_versions(LIBRARIES)


def cpu_info() -> dict:
    """CPU model, logical cores, its ISA class and the extensions int8/bf16 kernels depend on."""
    from qexport.core.hardware import FLAG_LABELS, host_cpu

    cpu = host_cpu()
    return {
        "model": cpu.model,
        "logical_cores": os.cpu_count(),
        "usable_cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "isa_class": cpu.isa_class(),
        "isa": {label: flag in cpu.flags for flag, label in reversed(FLAG_LABELS.items())},
    }


def isa_summary() -> list[str]:
    """The extensions of :data:`qexport.core.hardware.FLAG_LABELS` this host has, weakest first."""
    from qexport.core.hardware import host_cpu

    return host_cpu().labels()


def gpu_info() -> list[str]:
    """GPU names via nvidia-smi (cheap, and works without importing torch)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def git_commit(cwd: Path | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def environment(foreign_environments: dict[str, dict | None] | None = None) -> dict:
    """The facts every report prints; ``foreign_environments`` (versions inside runtimes' own
    environments) is passed in by the runtimes layer, which this helper module never imports."""
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "gpus": gpu_info(),
        "libraries": library_versions(),
        "foreign_environments": foreign_environments or {},
    }
