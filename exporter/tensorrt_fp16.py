"""tensorrt-fp16: a TensorRT engine built from the fp16 ONNX export, for an NVIDIA GPU.

The engine is built on the GPU it will run on (``build`` skips the family, in one sentence, on a
host without one, or without torch-tensorrt) and measured there by its runtime, ``tensorrt``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from qexport.core.manifest import Precision
from qexport.exporter.onnx_export import export_fp16
from qexport.exporter.registry import BuildContext, BuildDetails, register
from qexport.exporter.trt_engine import TensorRtConfig, build_engine


@register("tensorrt-fp16", variant="fp16", format="tensorrt", extension=".engine", precision=Precision.FP16,
          runtime="tensorrt", devices=("cuda",), config=TensorRtConfig,
          method="fp32 ONNX export → float16 conversion (fp32 I/O kept) → TensorRT engine (strongly typed, dynamic batch)")
def build_tensorrt_fp16(ctx: BuildContext, config: TensorRtConfig, path: Path) -> BuildDetails:
    with tempfile.TemporaryDirectory(prefix="qexport-trt-") as tmp:
        onnx_file = Path(tmp) / "model.fp16.onnx"
        export_fp16(ctx, onnx_file)
        built = build_engine(onnx_file, path, tuple(ctx.example.shape[1:]), config)
    return BuildDetails(config={"from": "fp16 ONNX export, fp32 I/O", **built},
                        notes=["a TensorRT engine runs only on the GPU model and TensorRT version recorded in its build config"])
