"""OpenVINO families: fp32 IR and NNCF post-training int8, run by the OpenVINO runtime.

Both start from this build's own fp32 ONNX export (``exporter/onnx_export.py``), read by
``openvino.Core().read_model`` with a dynamic batch -- not ``openvino.convert_model``, whose
Python tooling sends telemetry. The IR is an .xml (graph) and a .bin (weights) that only work as a
pair: the family declares the .bin as a companion, so build, verify, bench and pack treat the two
as one artifact with a sha256 each. int8 calibrates on the same seeded **train**-split subset as
every other PTQ family.
"""

from __future__ import annotations

from pathlib import Path

from qexport.core.errors import RuntimeMissing
from qexport.exporter.budget import ops_of_named_layers
from qexport.exporter.onnx_export import scratch_fp32
from qexport.core.options import BudgetConfig, FamilyConfig
from qexport.exporter.registry import BuildContext, BuildDetails, register, train_calibration
from qexport.core.build_records import Int8Coverage
from qexport.core.manifest import Precision
from qexport.runtimes.openvino import INFERENCE_PRECISION, telemetry_off

INSTALL = "pip install 'qexport[openvino]' (openvino==2026.4.1 nncf==3.4.0)"
IR = dict(format="openvino", extension=".openvino.xml", runtime="openvino", companions=(".bin",))


def require(module: str):
    """Import openvino / nncf, or skip the family with the install command as the reason."""
    import importlib

    telemetry_off()
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise RuntimeMissing(f"{module} is not installed; {INSTALL}") from err


def read_fp32(ctx: BuildContext, ov):
    """This build's fp32 ONNX graph as an OpenVINO model with a dynamic batch."""
    with scratch_fp32(ctx) as onnx_file:
        model = ov.Core().read_model(str(onnx_file))
    _, channels, height, width = ctx.example.shape
    model.reshape({model.input(0).get_any_name(): ov.PartialShape([-1, channels, height, width])})
    return model


def save_ir(ov, model, path: Path) -> None:
    """fp32 weights as they are: ``save_model`` compresses them to fp16 unless told not to."""
    ov.save_model(model, str(path), compress_to_fp16=False)


@register("openvino-fp32", variant="fp32", precision=Precision.FP32, method="ONNX export → openvino read_model "
          "(dynamic batch) → IR, weights kept fp32 (compress_to_fp16=False)", **IR)
def build_openvino_fp32(ctx: BuildContext, config: FamilyConfig, path: Path) -> BuildDetails:
    ov = require("openvino")
    save_ir(ov, read_fp32(ctx, ov), path)
    return BuildDetails(config={"compress_to_fp16": False, "inference_precision": INFERENCE_PRECISION,
                                "openvino": ov.get_version()})


@register("openvino-int8", variant="int8", precision=Precision.INT8, method="NNCF post-training quantization "
          "(nncf.quantize, performance preset) of the fp32 IR → IR", config=BudgetConfig,
          fallback=True, **IR)
def build_openvino_int8(ctx: BuildContext, config: BudgetConfig, path: Path) -> BuildDetails:
    ov, nncf = require("openvino"), require("nncf")
    batches = [batch.numpy() for batch in ctx.calibration_batches(batch_size=1)]
    model = read_fp32(ctx, ov)
    ignored, missing = ops_of_layers(model, ctx.keep_float)
    quantized = nncf.quantize(model, nncf.Dataset(batches), subset_size=len(batches),
                              preset=nncf.QuantizationPreset.PERFORMANCE,
                              ignored_scope=nncf.IgnoredScope(names=ignored) if ignored else None)
    save_ir(ov, quantized, path)
    return BuildDetails(config={"quantizer": "nncf.quantize, QuantizationPreset.PERFORMANCE", "subset_size": len(batches),
                                "inference_precision": INFERENCE_PRECISION, "openvino": ov.get_version(),
                                "nncf": nncf.__version__, "ignored_scope": ignored},
                        float_not_found=missing,
                        int8_coverage=ir_int8_coverage(quantized), calibration=train_calibration(ctx, len(batches)))


WEIGHT_OPS = ("Convolution", "GroupConvolution", "MatMul")


def ops_of_layers(model, layers: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The IR operations computing the torch modules ``layers`` (found by their weight constant,
    which keeps the parameter's name through the ONNX export), and the layers not found."""
    def weight_name(op) -> str | None:
        constant = weight_constant(op.input_value(1).get_node()) if op.get_type_name() in WEIGHT_OPS else None
        return constant.get_friendly_name() if constant is not None else None

    return ops_of_named_layers(((op.get_friendly_name(), weight_name(op)) for op in (model.get_ops() if layers else ())),
                               layers)


def ir_int8_coverage(model) -> Int8Coverage:
    """Convolution/MatMul layers whose weights are stored as int8 constants (NNCF writes them as
    Constant(i8) → Convert → Multiply by the scale): "quantized nothing" must show."""
    quantized = total = 0
    for op in model.get_ops():
        if op.get_type_name() not in WEIGHT_OPS:
            continue
        total += 1
        constant = weight_constant(op.input_value(1).get_node())
        element = str(constant.get_element_type()) if constant is not None else ""
        quantized += "int8" in element and "uint8" not in element
    return Int8Coverage.of_layers(quantized, total)


def weight_constant(node, depth: int = 4):
    """The Constant a weight input comes from through single-input ops (Convert, Multiply by a
    scale, Reshape of a grouped convolution's weight), or None."""
    for _ in range(depth):
        if node.get_type_name() == "Constant":
            return node
        if node.get_input_size() == 0:
            return None
        node = node.input_value(0).get_node()
    return None
