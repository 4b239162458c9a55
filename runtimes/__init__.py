"""One runner per deployment runtime, behind one interface, plus the bench harness.

Runners are looked up by the ``runtime`` name a manifest records -- never guessed from a file
name -- and imported lazily, so checking an ONNX artifact never imports torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from qexport.errors import QExportError, RuntimeMissing, did_you_mean
from runtimes.base import Runner

# runtime name -> (module, class, pip requirement that provides it)
RUNTIMES: dict[str, tuple[str, str, str]] = {
    "torchscript": ("runtimes.torchscript", "TorchScriptRunner", "torch"),
    "aoti": ("runtimes.aoti", "AOTInductorRunner", "torch"),
    "onnxruntime": ("runtimes.onnxrt", "OnnxRuntimeRunner", "onnxruntime"),
    "ipex": ("runtimes.ipex", "IpexRunner", "intel-extension-for-pytorch (its own environment: make setup-ipex)"),
}


def runner_class(runtime: str) -> type[Runner]:
    if runtime not in RUNTIMES:
        raise RuntimeMissing(f"Unknown runtime {runtime!r}{did_you_mean(runtime, RUNTIMES)}; known: {', '.join(RUNTIMES)}.")
    module_name, class_name, requirement = RUNTIMES[runtime]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RuntimeMissing(f"Runtime {runtime!r} is not installed ({err.name or err}); install {requirement!r}.") from err
    return getattr(module, class_name)


def load_runner(runtime: str, path: Path, device: str = "cpu", threads: int | None = None,
                manifest: dict | None = None) -> Runner:
    """Load the artifact at ``path`` in ``runtime``; unreadable files become one sentence.

    A runtime that lives in its own environment (IPEX) is served by a child process there.
    """
    from runtimes import foreign

    if not foreign.runs_here(runtime):
        from runtimes.remote import RemoteRunner

        return RemoteRunner.start(foreign.foreign_python(runtime), runtime, Path(path), manifest or {})
    cls = runner_class(runtime)
    return cls.load(Path(path), device=device, threads=threads, manifest=manifest or {})
