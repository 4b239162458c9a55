"""pt2e-cuda-fp16: the model in float16 (fp32 input and output kept), exported with a dynamic batch
and compiled by AOTInductor for the GPU it is built on (Triton kernels; the C++ wrapper for the
``--target-cpu`` class). The package runs only with that torch version and on that GPU's class.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import torch

from qexport.core.manifest import Precision
from qexport.core.options import TargetConfig
from qexport.exporter.graph_quant import export_dynamic
from qexport.exporter.half import HalfPrecision
from qexport.exporter.registry import BuildContext, BuildDetails, register
from qexport.runtimes.gpu import describe_gpu
from qexport.training.models import file_stem


@register("pt2e-cuda-fp16", variant="cuda-fp16", format="aoti", extension=".pt2", precision=Precision.FP16,
          runtime="aoti-cuda", devices=("cuda",), config=TargetConfig, compiled=True,
          method="model.half() (fp32 I/O kept) → torch.export (dynamic batch) → AOTInductor compiled for CUDA")
def build_pt2e_cuda_fp16(ctx: BuildContext, config: TargetConfig, path: Path) -> BuildDetails:
    started = time.perf_counter()
    model = HalfPrecision(ctx.fresh_model()).cuda().eval()
    with torch.no_grad(), tempfile.TemporaryDirectory(prefix="qexport-aoti-") as scratch:
        program = export_dynamic(model, ctx.example.cuda())
        # compiled under the artifact's real name: the package's inner folder is named after its file
        staged = Path(scratch) / f"{file_stem(ctx.model_name)}.cuda-fp16.pt2"
        with torch._inductor.config.patch({"freezing": True, **config.target.inductor_config()}):
            torch._inductor.aoti_compile_and_package(program, package_path=str(staged))
        shutil.copyfile(staged, path)
    return BuildDetails(config={**describe_gpu(), "compile_seconds": round(time.perf_counter() - started, 1),
                                "target_cpu": config.target.name},
                        notes=["compiled for the GPU class recorded in its build config and this exact torch version"])
