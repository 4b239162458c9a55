"""tensorrt-fp16: a TensorRT engine built from the fp16 ONNX export, for an NVIDIA GPU.

The engine is built on the GPU it will run on (``build`` skips the family, in one sentence, on a
host without one, or without torch-tensorrt) and measured there by its runtime, ``tensorrt``.
"""

from __future__ import annotations

from pathlib import Path

from qexport.core.manifest import Precision
from qexport.exporter.onnx_export import export_fp16
from qexport.exporter.registry import BuildContext, BuildDetails, register
from qexport.exporter.trt_engine import ENGINE_NOTE, TensorRtConfig, engine_from


@register("tensorrt-fp16", variant="fp16", format="tensorrt", extension=".engine", precision=Precision.FP16,
          runtime="tensorrt", devices=("cuda",), config=TensorRtConfig,
          method="fp32 ONNX export → float16 conversion (fp32 I/O kept) → TensorRT engine (strongly typed, dynamic batch)")
def build_tensorrt_fp16(ctx: BuildContext, config: TensorRtConfig, path: Path) -> BuildDetails:
    built, _ = engine_from(ctx, config, path, lambda onnx_file: export_fp16(ctx, onnx_file))
    return BuildDetails(config={"from": "fp16 ONNX export, fp32 I/O", **built},
                        notes=[ENGINE_NOTE])
