"""The ONNX steps the ONNX, OpenVINO and TensorRT families share: the fp32 export (dynamic batch,
qexport metadata, checked), its fp16 conversion, the calibration reader ONNX Runtime's quantizer
takes, and what an ONNX file holds (opset, int8 weights).

Each family exports its own fp32 graph, into a scratch folder where it is only a step
(:func:`scratch_fp32`: onnx-fp16, onnx-int8, openvino-fp32, openvino-int8, the TensorRT families),
rather than reading another family's output, so ``--only onnx-int8`` or ``--only openvino-int8`` works alone.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from qexport.core.build_records import Int8Coverage
from qexport.exporter.registry import BuildContext

EXPORT_BATCH = 2  # the export example's batch: never 1, which torch.export specialises (see export_example)


def export_example(ctx: BuildContext) -> torch.Tensor:
    """The test image repeated to a batch of :data:`EXPORT_BATCH`.

    torch.export treats a size-1 dimension as the constant 1 wherever the traced code depends on
    it (0/1 specialisation) while the ONNX input still says "batch"; a reshape computed from it,
    such as a channel shuffle's ``x.view(batch, groups, c // groups, h, w)``, then fails at every
    other batch size. A batch of 2 keeps the batch symbolic through computed shapes."""
    return ctx.example.expand(EXPORT_BATCH, *ctx.example.shape[1:]).contiguous()


def export_fp32(ctx: BuildContext, path: Path) -> None:
    """Export with a dynamic batch dimension and check the graph."""
    import onnx

    program = torch.onnx.export(ctx.fresh_model(), (export_example(ctx),), dynamo=True,
                                dynamic_shapes=({0: "batch"},), input_names=["input"],
                                output_names=["logits"], verbose=False)
    program.save(str(path))
    model = onnx.load(str(path))
    add_metadata(model, ctx)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def add_metadata(model, ctx: BuildContext) -> None:
    entries = {"qexport.model": ctx.model_name, "qexport.classes": json.dumps(ctx.data.classes),
               "qexport.mean": json.dumps(list(ctx.data.mean)), "qexport.std": json.dumps(list(ctx.data.std))}
    del model.metadata_props[:]
    for key, value in entries.items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value


@contextlib.contextmanager
def scratch_fp32(ctx: BuildContext) -> Iterator[Path]:
    """This build's fp32 ONNX export in a temporary folder, removed when the block ends."""
    with tempfile.TemporaryDirectory(prefix="qexport-onnx-") as tmp:
        path = Path(tmp) / "model.fp32.onnx"
        export_fp32(ctx, path)
        yield path


def export_fp16(ctx: BuildContext, path: Path) -> None:
    """The fp32 export converted to float16 by ONNX Runtime's converter, float32 input and output kept."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with scratch_fp32(ctx) as fp32:
        model = convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True)
    sort_nodes_topologically(model.graph)  # the converter appends its I/O casts at the end
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def sort_nodes_topologically(graph) -> None:
    """Reorder ``graph.node`` so every node comes after the producers of its inputs."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise ValueError("ONNX graph has a cycle or an undefined input; cannot order its nodes")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
        pending = [n for n in pending if n not in ready]
    del graph.node[:]
    graph.node.extend(ordered)


class CalibrationReader:
    """Feeds the seeded train-split calibration subset to ONNX Runtime's calibrator."""

    def __init__(self, ctx: BuildContext, input_name: str = "input"):
        self._batches = iter([b.numpy().astype(np.float32) for b in ctx.calibration_batches(32)])
        self.input_name = input_name

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:  # part of the reader protocol; one pass is all we need
        pass


def calibration_method(name: str):
    """ONNX Runtime's calibration method for ``--calibration-method`` (minmax, entropy, percentile)."""
    from onnxruntime.quantization import CalibrationMethod

    return {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
            "percentile": CalibrationMethod.Percentile}[name]


def nodes_reading_infinite_padding(path: Path) -> list[str]:
    """The ``Pad`` nodes that pad with an infinite value, and the nodes that read their output.

    A max pool with "same" padding (timm's ``MaxPool2dSame``, the stem of hybrid ViTs such as
    ``vit_tiny_r_s16_p8_224``) is exported as ``Pad(-inf)`` then ``MaxPool``. MinMax calibration of
    that tensor gives an infinite scale, and every result downstream of its quantized copy is
    garbage: the whole int8 model answers at chance. In float, the pad and its pool are a few cheap ops.
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {init.name: init for init in graph.initializer}
    constants.update({node.output[0]: attribute.t for node in graph.node if node.op_type == "Constant"
                      for attribute in node.attribute if attribute.name == "value"})

    def pads_with_infinity(node) -> bool:
        value = constants.get(node.input[2]) if node.op_type == "Pad" and len(node.input) > 2 else None
        return value is not None and not np.isfinite(numpy_helper.to_array(value)).all()

    pads = [node for node in graph.node if pads_with_infinity(node)]
    padded = {output for node in pads for output in node.output}
    return [node.name for node in pads] + [node.name for node in graph.node if padded & set(node.input)]


def onnx_opset(path: Path) -> int | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def onnx_int8_coverage(path: Path) -> Int8Coverage:
    """Weight elements stored as int8 initializers vs all weight initializers."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    quantized = total = 0
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.ndim < 2:  # scales, zero points, biases
            continue
        total += array.size
        if array.dtype in (np.int8, np.uint8):
            quantized += array.size
    return Int8Coverage.of_weights(quantized, total)
