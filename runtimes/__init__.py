"""One runner per deployment runtime, behind one interface, plus the bench harness.

Runners are looked up by the ``runtime`` name a manifest records -- never guessed from a file
name -- and imported lazily, so checking an ONNX artifact never imports torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import NamedTuple

from qexport.errors import QExportError, RuntimeMissing, did_you_mean
from runtimes.base import Runner

class RuntimeEntry(NamedTuple):
    module: str        # our runner module
    runner: str        # its Runner class
    requirement: str   # what provides the runtime, as a user installs it
    probe: str         # the import that must succeed for the runtime to be usable


RUNTIMES: dict[str, RuntimeEntry] = {
    "torchscript": RuntimeEntry("runtimes.torchscript", "TorchScriptRunner", "torch", "torch"),
    "aoti": RuntimeEntry("runtimes.aoti", "AOTInductorRunner", "torch", "torch"),
    "onnxruntime": RuntimeEntry("runtimes.onnxrt", "OnnxRuntimeRunner", "onnxruntime", "onnxruntime"),
    "ipex": RuntimeEntry("runtimes.ipex", "IpexRunner", "intel-extension-for-pytorch (its own environment: make setup-ipex)",
                         "intel_extension_for_pytorch"),
}


def runtime_problem(runtime: str) -> str | None:
    """None when ``runtime`` can run here (in this interpreter or its own environment); else why not."""
    from runtimes import foreign

    if runtime not in RUNTIMES:
        return f"unknown runtime {runtime!r}"
    if foreign.is_foreign(runtime):
        try:
            foreign.foreign_python(runtime)
        except RuntimeMissing as err:
            return str(err)
        return None
    entry = RUNTIMES[runtime]
    return None if importlib.util.find_spec(entry.probe) else f"{entry.probe} is not installed; install {entry.requirement!r}"


def runner_class(runtime: str) -> type[Runner]:
    if runtime not in RUNTIMES:
        raise RuntimeMissing(f"Unknown runtime {runtime!r}{did_you_mean(runtime, RUNTIMES)}; known: {', '.join(RUNTIMES)}.")
    module_name, class_name, requirement, _ = RUNTIMES[runtime]
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
