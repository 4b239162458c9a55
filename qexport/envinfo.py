"""Facts about the machine and libraries that every report prints next to its numbers."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

LIBRARIES = ("torch", "torchvision", "torchao", "onnx", "onnxruntime", "onnxscript",
             "intel-extension-for-pytorch", "numpy")
ISA_FLAGS = {
    "avx2": "AVX2",
    "avx512f": "AVX-512F",
    "avx512_vnni": "AVX-512 VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "avx_vnni": "AVX-VNNI",
    "amx_tile": "AMX",
    "amx_int8": "AMX-INT8",
    "amx_bf16": "AMX-BF16",
    "avx_ne_convert": "AVX-NE-CONVERT",
}


def library_versions() -> dict[str, str | None]:
    """Installed versions, read from package metadata so nothing heavy is imported."""
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cpu_info() -> dict:
    """CPU model, logical cores, its ISA class and the extensions int8/bf16 kernels depend on."""
    from qexport.hardware import host_cpu

    cpu = host_cpu()
    return {
        "model": cpu.model,
        "logical_cores": os.cpu_count(),
        "usable_cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "isa_class": cpu.isa_class(),
        "isa": {label: flag in cpu.flags for flag, label in ISA_FLAGS.items()},
    }


def isa_summary(cpu: dict | None = None) -> list[str]:
    return [label for label, present in (cpu or cpu_info())["isa"].items() if present]


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


def foreign_environments() -> dict[str, dict | None]:
    """Versions inside each runtime's own environment (IPEX: torch 2.8), read from package
    metadata by that interpreter without importing anything heavy; None where it is absent."""
    import json
    import sys

    from runtimes.foreign import FOREIGN

    found: dict[str, dict | None] = {}
    for runtime, env in FOREIGN.items():
        python = Path(os.environ.get(env.variable) or env.default)
        if env.module in sys.modules or not python.is_file():
            found[runtime] = None
            continue
        script = ("import importlib.metadata as m, json\n"
                  "def v(p):\n    try: return m.version(p)\n    except m.PackageNotFoundError: return None\n"
                  f"print(json.dumps({{p: v(p) for p in {list(env.packages)!r}}}))")
        try:
            out = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=30, check=True)
            found[runtime] = {"python": str(python), "versions": json.loads(out.stdout)}
        except (OSError, subprocess.SubprocessError, ValueError):
            found[runtime] = None
    return found


def ipex_summary(env: dict) -> str:
    """'2.8.0', '2.8.0 (own environment, torch 2.8.0)' or 'not installed'."""
    local = env["libraries"].get("intel-extension-for-pytorch")
    if local:
        return local
    own = (env.get("foreign_environments") or {}).get("ipex")
    if own and own["versions"].get("intel_extension_for_pytorch"):
        return f"{own['versions']['intel_extension_for_pytorch']} (own environment, torch {own['versions'].get('torch')})"
    return "not installed (make setup-ipex)"


def environment() -> dict:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "gpus": gpu_info(),
        "libraries": library_versions(),
        "foreign_environments": foreign_environments(),
    }
