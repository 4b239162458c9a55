"""Imported once by the fork server that forks every build child (``isolation.build_processes``).

A spawned child paid ~5 s importing torch, torchvision, torchao and Inductor before it could build
anything -- a minute of a 15-family ``build --all`` on a 2-core host. The fork server imports
them once and forks each child from there. It never runs a torch op, so a child still starts
from a torch with no thread pool, no quantized engine set and no Inductor patch applied: the
isolation a spawned child gave. Only modules that start no thread when imported are listed
(onnxruntime and openvino do start one; their children import them themselves).
"""

from __future__ import annotations

from qexport.core.progress import quiet_library_warnings

quiet_library_warnings()  # before torch and torchao are imported: some notices are read then

import torch  # noqa: E402,F401
import torch._inductor.compile_fx  # noqa: E402,F401  pt2e families: AOTInductor
import torch._inductor.fx_passes.mkldnn_fusion  # noqa: E402,F401
import torch.export  # noqa: E402,F401
import torchao.quantization.pt2e.quantize_pt2e  # noqa: E402,F401
import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer  # noqa: E402,F401
import torchvision  # noqa: E402,F401
import torchvision.models.quantization  # noqa: E402,F401  eager int8 twins

import qexport.exporter  # noqa: E402,F401  every family registered
import qexport.exporter.isolation  # noqa: E402,F401  the child's entry point
