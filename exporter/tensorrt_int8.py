"""tensorrt-int8: a TensorRT engine built from an explicit Q/DQ int8 ONNX export, for an NVIDIA GPU.

ONNX Runtime's static quantizer calibrates the fp32 export on the seeded train-split images every
PTQ family uses and writes QuantizeLinear/DequantizeLinear pairs; TensorRT runs int8 exactly where
they stand. TensorRT takes symmetric int8 Q/DQ only (zero point 0; no int32 bias), so activations and
weights are signed int8 and biases stay float here, unlike onnx-int8's u8 activations for x86 CPUs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qexport.core.manifest import Precision
from qexport.core.options import BudgetConfig, CalibrationMethodConfig
from qexport.core.progress import say
from qexport.exporter.onnx_export import (CalibrationReader, calibration_method, nodes_reading_infinite_padding,
                                          scratch_fp32)
from qexport.exporter.registry import BuildContext, BuildDetails, register, train_calibration
from qexport.exporter.trt_engine import ENGINE_NOTE, TensorRtConfig, engine_from


@dataclass(frozen=True)
class TensorRtInt8Config(BudgetConfig, CalibrationMethodConfig, TensorRtConfig):
    """tensorrt-int8 is held to the budget and reads the calibration method and the engine's profile."""


@register("tensorrt-int8", variant="int8", format="tensorrt", extension=".engine", precision=Precision.INT8,
          runtime="tensorrt", devices=("cuda",), config=TensorRtInt8Config,
          method="fp32 ONNX export → onnxruntime quantize_static (Q/DQ, symmetric s8, per-channel weights) → TensorRT engine",
          recipe=2)  # 2: a -inf padding and its readers stay float
def build_tensorrt_int8(ctx: BuildContext, config: TensorRtInt8Config, path: Path) -> BuildDetails:
    built, coverage = engine_from(ctx, config, path, lambda onnx_file: export_qdq(ctx, config, onnx_file))
    return BuildDetails(config={"from": "Q/DQ ONNX export", "activations": "int8, symmetric", "weights": "int8, per channel",
                                "calibration_method": config.calibration_method, **built},
                        int8_coverage=coverage,
                        calibration=train_calibration(ctx, min(ctx.shared.calibration_samples, len(ctx.data.train))),
                        notes=[ENGINE_NOTE])


def export_qdq(ctx: BuildContext, config: TensorRtInt8Config, path: Path) -> None:
    """The fp32 export with symmetric int8 Q/DQ pairs, calibrated by ONNX Runtime: what TensorRT
    takes (it runs on the CPU too, so it is tested where no GPU is)."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with scratch_fp32(ctx) as fp32:
        say(f"  calibrating tensorrt-int8 ({config.calibration_method}, {ctx.shared.calibration_samples} train images)")
        quantize_static(str(fp32), str(path), CalibrationReader(ctx), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=calibration_method(config.calibration_method),
                        nodes_to_exclude=nodes_reading_infinite_padding(fp32),
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "QuantizeBias": False})  # TensorRT takes int8 Q/DQ only: float bias
