"""The fp32 ONNX export (dynamic batch, qexport metadata, checked) the ONNX and OpenVINO families
start from.

Each family exports its own fp32 graph, into a scratch folder where it is only a step
(:func:`scratch_fp32`: onnx-fp16, onnx-int8, openvino-fp32, openvino-int8), rather than reading
another family's output, so ``--only onnx-int8`` or ``--only openvino-int8`` works alone.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

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
