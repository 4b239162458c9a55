"""ONNX families, run by ONNX Runtime: fp32, fp16 (a GPU format) and static QDQ int8.

Each family starts from its own fp32 export (``exporter/onnx_export.py``, a few seconds) rather
than another family's output, so ``--only onnx-int8`` works alone. Every family runs the
graph it wrote at batch 1 and at the evaluation batch before the build goes on: a graph that runs
at one batch size only fails the build in one sentence naming the node and the model's layer.
"""

from __future__ import annotations

import ast
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from qexport.core.errors import QExportError
from qexport.core.hardware import REDUCED_RANGE_REASON
from qexport.exporter.budget import ops_of_named_layers
from qexport.exporter.capture import describe_layer, describe_site
from qexport.exporter.onnx_export import (CalibrationReader, calibration_method, export_fp16, export_fp32,
                                          nodes_reading_infinite_padding, onnx_int8_coverage, onnx_opset, scratch_fp32)
from qexport.core.options import BudgetConfig, CalibrationMethodConfig, FamilyConfig, TargetConfig
from qexport.exporter.registry import EVAL_BATCH, BuildContext, BuildDetails, register, train_calibration
from qexport.core.manifest import Precision

if TYPE_CHECKING:  # onnxruntime is imported only when a build runs a graph
    from qexport.runtimes.onnxrt import RunFailure

OPSET_NOTE = "torch.onnx.export(dynamo=True), dynamic batch"
CHECK_BATCHES = (1, EVAL_BATCH)  # every ONNX graph runs at both before its build goes on (fewer than 250 for large images)


@register("onnx-fp32", variant="fp32", format="onnx", extension=".onnx", precision=Precision.FP32,
          runtime="onnxruntime", method=f"{OPSET_NOTE}, onnx.checker", devices=("cpu", "cuda"))
def build_onnx_fp32(ctx: BuildContext, config: FamilyConfig, path: Path) -> BuildDetails:
    export_fp32(ctx, path)
    require_runs_at_check_batches("onnx-fp32", path, ctx)
    return BuildDetails(config={"opset": onnx_opset(path), "dynamic_axes": {"input": {"0": "batch"}}})


@register("onnx-fp16", variant="fp16", format="onnx", extension=".onnx", precision=Precision.FP16,
          runtime="onnxruntime", method="fp32 export → onnxruntime float16 conversion, fp32 I/O kept",
          devices=("cuda", "cpu"),
          cpu_note="fp16 is a GPU format: ONNX Runtime's CPU provider inserts casts and runs slower than fp32")
def build_onnx_fp16(ctx: BuildContext, config: FamilyConfig, path: Path) -> BuildDetails:
    export_fp16(ctx, path)
    require_runs_at_check_batches("onnx-fp16", path, ctx)
    return BuildDetails(config={"opset": onnx_opset(path), "keep_io_types": True})


@dataclass(frozen=True)
class OnnxInt8Config(BudgetConfig, TargetConfig, CalibrationMethodConfig):
    """onnx-int8 reads the calibration method, and the target CPU for its weights' range."""


@register("onnx-int8", variant="int8", format="onnx", extension=".onnx", precision=Precision.INT8,
          runtime="onnxruntime",
          method="onnxruntime quant_pre_process + quantize_static (QDQ, per-channel weights, U8S8)",
          config=OnnxInt8Config, fallback=True,
          recipe=2)  # 2: a -inf padding and its readers stay float
def build_onnx_int8(ctx: BuildContext, config: OnnxInt8Config, path: Path) -> BuildDetails:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from qexport.core.progress import say

    with scratch_fp32(ctx) as fp32, tempfile.TemporaryDirectory(prefix="qexport-onnx-") as tmp:
        pre = Path(tmp) / "model.pre.onnx"
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=False)
        excluded, missing = nodes_of_layers(pre, ctx.keep_float)
        padding = [node for node in nodes_reading_infinite_padding(pre) if node not in excluded]
        if padding:
            say(f"  keeping {len(padding)} nodes in float: they read a padding of -inf ('same' max pooling), "
                "whose range no calibration can represent")
        say(f"  calibrating onnx-int8 ({config.calibration_method}, {ctx.shared.calibration_samples} train images)")
        quantize_static(str(pre), str(path), CalibrationReader(ctx), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=calibration_method(config.calibration_method), nodes_to_exclude=excluded + padding,
                        reduce_range=config.int8_reduced_range)
    require_runs_at_check_batches("onnx-int8", path, ctx)
    weights = f"int8, 7-bit range ({REDUCED_RANGE_REASON})" if config.int8_reduced_range else "int8"
    return BuildDetails(config={"format": "QDQ", "per_channel": True, "activations": "uint8", "weights": weights,
                                "calibration_method": config.calibration_method, "opset": onnx_opset(path),
                                "nodes_to_exclude": excluded, "float_for_infinite_padding": padding},
                        float_not_found=missing,
                        int8_coverage=onnx_int8_coverage(path),
                        calibration=train_calibration(ctx, min(ctx.shared.calibration_samples, len(ctx.data.train))))


def nodes_of_layers(path: Path, layers: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The ONNX nodes computing the torch modules ``layers``, and the layers not found.

    The exporter names each weight initializer after its parameter (``features.0.0.weight``),
    also after folding batch norm into the convolution, so a node is found by its weight input.
    """
    import onnx

    if not layers:
        return [], []
    graph = onnx.load(str(path), load_external_data=False).graph
    return ops_of_named_layers(((node.name, node.input[1] if len(node.input) > 1 else None) for node in graph.node),
                               layers)


@dataclass(frozen=True)
class NodeOrigin:
    """Where the dynamo exporter says an ONNX node came from (its node metadata)."""

    layer: str | None     # module path of the innermost module ('' for the model's own forward)
    filename: str | None  # the innermost frame of the torch code it was traced from
    lineno: int | None


STACK_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+)')


def node_origin(path: Path, node_name: str) -> NodeOrigin | None:
    """The torch module and source line the node ``node_name`` was exported from, or None when
    the graph has no such node (an optimizer renamed it) or it carries no export metadata."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    node = next((n for n in graph.node if n.name == node_name), None)
    if node is None:
        return None
    props = {prop.key: prop.value for prop in node.metadata_props}
    scopes = _literal_list(props.get("pkg.torch.onnx.name_scopes", ""))
    frames = list(STACK_FRAME.finditer(props.get("pkg.torch.onnx.stack_trace", "")))
    if len(scopes) < 2 and not frames:
        return None
    innermost = frames[-1] if frames else None
    return NodeOrigin(layer=scopes[-2] if len(scopes) >= 2 else None,  # the last scope is the op itself
                      filename=innermost["file"] if innermost else None,
                      lineno=int(innermost["line"]) if innermost else None)


def _literal_list(text: str) -> list[str]:
    """``"['', 'stage3', 'stage3.0', 'view_8']"`` as a list; [] for anything else."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def describe_origin(origin: NodeOrigin, model: torch.nn.Module) -> str:
    """"layer 'stage3.0' (InvertedResidual) at shufflenetv2.py:34 (`x = x.view(...)`)", in
    capture.py's words; a layer name the model does not have is left out."""
    name = origin.layer if origin.layer in dict(model.named_modules()) else None
    if origin.filename is None or origin.lineno is None:
        return describe_layer(name, model)
    return describe_site(name, model, origin.filename, origin.lineno)


def run_failure_sentence(family: str, path: Path, batch: int, failure: RunFailure,
                         model: torch.nn.Module) -> str:
    """One sentence: the family, the batch it failed at, the node and op ONNX Runtime stopped at,
    the model's layer when the node's metadata names it, what ONNX Runtime said, and what to do."""
    said = f" ({failure.status})" if failure.status else ""
    if failure.node:
        origin = node_origin(path, failure.node)
        layer = f" from {describe_origin(origin, model)}" if origin else ""
        said = f": its {failure.op_type} node '{failure.node}'{layer} fails{said}"
    return f"{family} does not run at batch {batch} in ONNX Runtime{said} -- {what_to_do(family, batch)}."


def what_to_do(family: str, batch: int) -> str:
    """A graph that ran at batch 1 and fails at another holds a size from the export; one that
    fails at batch 1 does not run at all."""
    if batch == CHECK_BATCHES[0]:
        return f"ONNX Runtime cannot run this export of the model; leave {family} out of the build"
    return (f"the exported graph holds a size that does not follow the input there; compute that code's sizes "
            f"from the input (x.shape, -1, flatten) or leave {family} out of the build")


def require_runs_at_check_batches(family: str, path: Path, ctx: BuildContext) -> None:
    """Run the written graph at batch 1 and at the evaluation batch; a failure removes the file
    and is one sentence (:func:`run_failure_sentence`), so a graph that runs at one batch never ships."""
    from qexport.runtimes.onnxrt import first_failing_batch

    from qexport.core.preprocessing import batch_for

    size = int(ctx.example.shape[-1])
    failed = first_failing_batch(str(path), tuple(ctx.example.shape[1:]), (CHECK_BATCHES[0], batch_for(size, CHECK_BATCHES[1])))
    if failed is None:
        return
    batch, failure = failed
    sentence = run_failure_sentence(family, path, batch, failure, ctx.model)
    path.unlink(missing_ok=True)
    raise QExportError(sentence)
