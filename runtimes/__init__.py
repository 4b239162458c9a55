"""One runner per deployment runtime, behind one interface, plus the bench harness.

Runners are looked up by the ``runtime`` name a manifest records -- never guessed from a file
name -- and imported lazily, so checking an ONNX artifact never imports torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from qexport.core.errors import RuntimeMissing, did_you_mean
from qexport.core.gpu_needs import GpuRequirement, HostGpu
from qexport.core.manifest import LoadHints
from qexport.runtimes.base import Runner
from qexport.runtimes.foreign import ForeignEnvironment
from qexport.runtimes.settings import (EXECUTORCH_SETTINGS, ONNXRUNTIME_SETTINGS, OPENVINO_SETTINGS,
                                       TORCH_ONEDNN_SETTINGS, Setting)

@dataclass(frozen=True)
class Runtime:
    """Everything qexport knows about one runtime, declared once: adding a runtime means one runner
    module and one entry in :data:`RUNTIMES` (see docs/ARCHITECTURE.md)."""

    name: str
    module: str              # our runner module (imported only when an artifact is loaded)
    runner: str              # its Runner class
    requirement: str         # what provides the runtime, as a user installs it
    probe: str               # the import that must succeed for the runtime to be usable
    packages: tuple[str, ...]  # distributions whose versions the manifest records
    load_snippet: str        # how a deployment team loads the artifact with only this runtime (model card)
    requires: Callable[[dict[str, str | None]], dict[str, str]]  # version ranges, from the versions it was built with
    #                          (in the runtime's own environment, where it has one)
    environment: ForeignEnvironment | None = None  # its own Python environment, when it cannot live in ours
    gpu: GpuRequirement | None = None  # runs only on an NVIDIA GPU, with CUDA and this package
    settings: tuple[Setting, ...] = ()  # what `qexport tune` may try (see qexport.runtimes.settings)


def same_minor_or_newer(package: str) -> Callable[[dict[str, str | None]], dict[str, str]]:
    """TorchScript reads archives from older torch releases: the build's major.minor or newer."""
    def requires(versions: dict[str, str | None]) -> dict[str, str]:
        major, minor = (versions.get(package) or "0.0").split(".")[:2]
        return {package: f">={major}.{minor}"}
    return requires


def ipex_release(versions: dict[str, str | None]) -> dict[str, str]:
    """IPEX 2.8.0 runs only with the torch minor release it was built for, and its archives only
    with that IPEX: both pinned from the IPEX environment's own versions."""
    torch_major_minor = ".".join((versions.get("torch") or "0.0").split("+")[0].split(".")[:2])
    return {"torch": f"=={torch_major_minor}.*",
            "intel_extension_for_pytorch": f"=={(versions.get('intel_extension_for_pytorch') or '0').split('+')[0]}"}


def exactly(package: str) -> Callable[[dict[str, str | None]], dict[str, str]]:
    """Compiled code (AOTInductor) runs only under the torch it was compiled with."""
    return lambda versions: {package: f"=={(versions.get(package) or '0').split('+')[0]}"}


RUNTIMES: dict[str, Runtime] = {rt.name: rt for rt in (
    Runtime("torchscript", "qexport.runtimes.torchscript", "TorchScriptRunner", "torch", "torch", ("torch",),
            '''import numpy as np, torch
model = torch.jit.load("{file}", map_location="cpu").eval()
x = np.load("{file}.golden.npz")["inputs"]          # float32 NCHW, normalised as the manifest says
with torch.inference_mode():
    logits = model(torch.from_numpy(x)).float().numpy()''', same_minor_or_newer("torch"), settings=TORCH_ONEDNN_SETTINGS),
    Runtime("aoti", "qexport.runtimes.aoti", "AOTInductorRunner", "torch", "torch", ("torch",),
            '''import numpy as np, torch                         # the torch version in the manifest, same CPU ISA
model = torch._inductor.aoti_load_package("{file}")
x = np.load("{file}.golden.npz")["inputs"]          # float32 NCHW, normalised as the manifest says
with torch.inference_mode():
    logits = model(torch.from_numpy(x)).numpy()''', exactly("torch"), settings=TORCH_ONEDNN_SETTINGS),
    Runtime("onnxruntime", "qexport.runtimes.onnxrt", "OnnxRuntimeRunner", "onnxruntime", "onnxruntime",
            ("onnxruntime",), '''import numpy as np, onnxruntime as ort
session = ort.InferenceSession("{file}", providers=["CPUExecutionProvider"])
x = np.load("{file}.golden.npz")["inputs"]          # float32 NCHW, normalised as the manifest says
logits = session.run(None, {{"input": x}})[0]''',
            lambda versions: {"onnxruntime": ">=1.17"},  # opset 18 QDQ models load from 1.17 on
            settings=ONNXRUNTIME_SETTINGS),
    Runtime("ipex", "qexport.runtimes.ipex", "IpexRunner",
            "intel-extension-for-pytorch (its own environment: qexport setup ipex)", "intel_extension_for_pytorch",
            ("torch", "torchvision", "intel_extension_for_pytorch"), '''import numpy as np
import intel_extension_for_pytorch                  # FIRST: registers IPEX's fused kernels
import torch                                        # torch 2.8.* with IPEX 2.8.0
model = torch.jit.load("{file}").eval()
x = np.load("{file}.golden.npz")["inputs"]          # float32 NCHW, normalised as the manifest says
with torch.inference_mode():
    logits = model(torch.from_numpy(x)).float().numpy()''', ipex_release,
            ForeignEnvironment(runtime="ipex", module="intel_extension_for_pytorch", variable="QEXPORT_IPEX_PYTHON",
                               requirements="requirements-ipex.txt"), settings=TORCH_ONEDNN_SETTINGS),
    Runtime("openvino", "qexport.runtimes.openvino", "OpenVinoRunner", "qexport[openvino] (openvino==2026.4.1)",
            "openvino", ("openvino",), '''import numpy as np, openvino as ov                # the .bin must sit beside the .xml
compiled = ov.Core().compile_model("{file}", "CPU", {{"INFERENCE_PRECISION_HINT": "f32"}})
x = np.load("{file}.golden.npz")["inputs"]          # float32 NCHW, normalised as the manifest says
logits = compiled(x)[0]''', same_minor_or_newer("openvino"), settings=OPENVINO_SETTINGS),
    Runtime("executorch", "qexport.runtimes.executorch", "ExecuTorchRunner", "qexport[executorch] (executorch==1.5.1)",
            "executorch", ("executorch",), '''import numpy as np, torch                         # torch only for its tensor type
from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
from executorch.runtime import Runtime
_unsafe_reset_threadpool(1)                         # before loading: the pool defaults to every core
method = Runtime.get().load_program("{file}").load_method("forward")
x = np.load("{file}.golden.npz")["inputs"]          # float32 NCHW; the .pte takes its fixed batch
logits = np.concatenate([method.execute([torch.from_numpy(x[i:i + 1])])[0].numpy() for i in range(len(x))])''',
            same_minor_or_newer("executorch"), settings=EXECUTORCH_SETTINGS),
    Runtime("tensorrt", "qexport.runtimes.tensorrt", "TensorRTRunner", "torch-tensorrt==2.14.0 (TensorRT 11.1, CUDA 13)",
            "tensorrt", ("tensorrt-cu13",), '''import numpy as np, tensorrt as trt, torch          # the GPU and TensorRT version in the manifest
engine = trt.Runtime(trt.Logger()).deserialize_cuda_engine(open("{file}", "rb").read())
context = engine.create_execution_context()
x = torch.from_numpy(np.load("{file}.golden.npz")["inputs"]).cuda()  # float32 NCHW, normalised as the manifest says
context.set_input_shape("input", tuple(x.shape))
logits = torch.empty(tuple(context.get_tensor_shape("logits")), device="cuda")
context.set_tensor_address("input", x.data_ptr()); context.set_tensor_address("logits", logits.data_ptr())
context.execute_async_v3(torch.cuda.current_stream().cuda_stream); torch.cuda.synchronize()''',
            exactly("tensorrt-cu13"), gpu=GpuRequirement(("tensorrt-cu13",), "torch-tensorrt==2.14.0")),
    Runtime("onnxruntime-cuda", "qexport.runtimes.onnxrt_cuda", "OnnxRuntimeCudaRunner", "onnxruntime-gpu==1.31.1",
            "onnxruntime", ("onnxruntime-gpu",), '''import numpy as np, onnxruntime as ort              # onnxruntime-gpu
session = ort.InferenceSession("{file}", providers=["CUDAExecutionProvider"])
x = np.load("{file}.golden.npz")["inputs"]          # float32 NCHW, normalised as the manifest says
logits = session.run(None, {{"input": x}})[0]''',
            same_minor_or_newer("onnxruntime-gpu"),
            gpu=GpuRequirement(("onnxruntime-gpu",), "onnxruntime-gpu==1.31.1",
                               " after `pip uninstall onnxruntime` (both install the onnxruntime module)")),
    Runtime("aoti-cuda", "qexport.runtimes.aoti_cuda", "AOTInductorCudaRunner", "torch (a CUDA build)", "torch", ("torch",),
            '''import numpy as np, torch                         # the torch version in the manifest, with CUDA, on the GPU it records
model = torch._inductor.aoti_load_package("{file}")
x = torch.from_numpy(np.load("{file}.golden.npz")["inputs"]).cuda()  # float32 NCHW, normalised as the manifest says
with torch.inference_mode():
    logits = model(x).cpu().numpy()''', exactly("torch"), gpu=GpuRequirement(("torch",))),
)}


def gpu_problem(runtime: str, host: HostGpu | None = None) -> str | None:
    """None when ``runtime`` runs on the CPU, or this host (``host``: hand-made facts) has the GPU,
    CUDA and package it needs; else one sentence saying what it needs and what is missing."""
    needs = RUNTIMES[runtime].gpu if runtime in RUNTIMES else None
    if needs is None:
        return None
    from qexport.runtimes.gpu import host_gpu

    asked = tuple(sorted({name for rt in RUNTIMES.values() if rt.gpu for name in rt.gpu.provided_by}))
    return needs.problem(host or host_gpu(asked))


def runtime_problem(runtime: str) -> str | None:
    """None when ``runtime`` can run here (in this interpreter or its own environment); else why not."""
    from qexport.runtimes import foreign

    if runtime not in RUNTIMES:
        return f"unknown runtime {runtime!r}"
    needs_gpu = gpu_problem(runtime)
    if needs_gpu:
        return needs_gpu
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
    module_name, class_name, requirement = RUNTIMES[runtime].module, RUNTIMES[runtime].runner, RUNTIMES[runtime].requirement
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise RuntimeMissing(f"Runtime {runtime!r} is not installed ({err.name or err}); install {requirement!r}.") from err
    return getattr(module, class_name)


def load_runner(runtime: str, path: Path, device: str = "cpu", threads: int | None = None,
                hints: LoadHints | None = None, settings: Mapping[str, str] | None = None) -> Runner:
    """Load the artifact at ``path`` in ``runtime``; unreadable files become one sentence.

    ``settings``: the runtime's declared settings to run it with; the API ones are applied here, the
    environment ones must already be in this process's environment (the bench worker's is set so).
    A runtime that lives in its own environment (IPEX) is served by a child process there.
    """
    from qexport.runtimes.settings import api_part, check_settings

    check_settings(runtime, settings or {})
    from qexport.runtimes import foreign

    needs_gpu = gpu_problem(runtime)
    if needs_gpu:  # before anything is imported
        raise RuntimeMissing(f"Runtime {runtime!r} {needs_gpu}.")
    if not foreign.runs_here(runtime):
        from qexport.runtimes.remote import RemoteRunner

        return RemoteRunner.start(foreign.foreign_python(runtime), runtime, Path(path), hints or LoadHints())
    cls = runner_class(runtime)
    return cls.load(Path(path), device=device, threads=threads, hints=hints or LoadHints(),
                    settings=api_part(runtime, settings or {}))
