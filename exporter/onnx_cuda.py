"""onnx-cuda-fp16: the fp16 ONNX export, run and measured by ONNX Runtime's CUDA execution
provider (``onnxruntime-gpu``) on an NVIDIA GPU, where onnx-fp16 is measured on the CPU."""

from __future__ import annotations

from pathlib import Path

from qexport.core.manifest import Precision
from qexport.core.options import FamilyConfig
from qexport.exporter.onnx_export import export_fp16, onnx_opset
from qexport.exporter.registry import BuildContext, BuildDetails, register


@register("onnx-cuda-fp16", variant="cuda-fp16", format="onnx", extension=".onnx", precision=Precision.FP16,
          runtime="onnxruntime-cuda", devices=("cuda",),
          method="fp32 ONNX export → onnxruntime float16 conversion (fp32 I/O kept), CUDA execution provider")
def build_onnx_cuda_fp16(ctx: BuildContext, config: FamilyConfig, path: Path) -> BuildDetails:
    export_fp16(ctx, path)
    return BuildDetails(config={"opset": onnx_opset(path), "keep_io_types": True, "provider": "CUDAExecutionProvider"})
