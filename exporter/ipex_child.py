"""Builds one IPEX artifact. Runs **inside the IPEX environment** (torch 2.8 + IPEX 2.8.0).

Started by :mod:`exporter.ipex` as a script (``python exporter/ipex_child.py SPEC.json``), not as
``-m exporter...``: the ``exporter`` package imports the torch-2.14 families, which this
interpreter cannot load. It only needs torch, torchvision, IPEX, numpy and ``qexport.training.models``.

The recipe is the one that makes IPEX fast, and the one the published 0.55x comparison skipped:
trace, freeze, and run the frozen graph twice so IPEX fuses it before it is saved.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def load_model(spec: dict):
    import torch

    from qexport.training.models import build_model

    model = build_model(spec["model"], spec["num_classes"], spec["image_size"])
    state = torch.load(spec["state_dict"], map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def calibration_batches(spec: dict, batch_size: int = 64):
    import torch

    images = np.load(spec["calibration"])
    for start in range(0, len(images), batch_size):
        yield torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size]))


def int8_layers(saved_graph, fused_graph) -> dict:
    """Count convolutions/linears fed by a dequantized (int8) weight, and IPEX's fused int8
    groups after warm-up: "quantized nothing" must show."""
    layers = int8 = 0
    for node in saved_graph.nodes():
        if node.kind() in ("aten::_convolution", "aten::conv2d", "aten::linear"):
            layers += 1
            weight = list(node.inputs())[1].node()
            int8 += weight.kind() == "aten::dequantize"
    fused = sum(node.kind() == "ipex::LlgaFusionGroup" for node in fused_graph.nodes())
    return {"int8_layers": int8, "layers": layers, "fused_int8_groups": fused}


def weight_totals(model) -> dict:
    """Conv/Linear weights (what IPEX's default static qconfig quantizes) vs all weights."""
    import torch

    quantizable = total = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(weight, torch.Tensor) and not list(module.children()):
            total += weight.numel()
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                quantizable += weight.numel()
    return {"quantized_weights": quantizable, "total_weights": total,
            "ratio": round(quantizable / total, 6) if total else 0.0}


def trace_freeze_fuse(model, example, autocast_dtype=None):
    import torch

    context = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else torch.autocast("cpu", enabled=False)
    with torch.no_grad(), context:
        traced = torch.jit.trace(model, example, check_trace=False)
        frozen = torch.jit.freeze(traced)
        frozen(example)  # IPEX rewrites the graph into fused kernels on the first runs
        frozen(example)
    return frozen


def static_qconfig_mapping(reduced_range: bool):
    """IPEX's default static mapping; with ``reduced_range``, 7-bit activations (0-127), as pt2e and
    ONNX Runtime use for targets without VNNI, where u8 x s8 products saturate their 16-bit sums
    (ResNet18 on an AVX2 host lost 1.7 top-1 points with the full range)."""
    import intel_extension_for_pytorch as ipex
    from torch.ao.quantization import QConfig, QConfigMapping

    default = ipex.quantization.default_static_qconfig_mapping
    if not reduced_range:
        return default
    qconfig = default.global_qconfig
    return QConfigMapping().set_global(QConfig(activation=qconfig.activation.with_args(reduce_range=True),
                                               weight=qconfig.weight))


def build_int8(spec: dict, model, example) -> tuple[object, dict]:
    from intel_extension_for_pytorch.quantization import convert, prepare

    mapping = static_qconfig_mapping(spec["reduced_range"])
    prepared = prepare(model, mapping, example_inputs=example, inplace=False)
    seen = 0
    import torch

    with torch.no_grad():
        for batch in calibration_batches(spec):
            prepared(batch)
            seen += batch.shape[0]
    # In place: the prepared model is ours alone, and IPEX's own copy swallows a failed deepcopy (a
    # model caching tensors in a dict attribute) and then fails with an UnboundLocalError.
    converted = convert(prepared, inplace=True)
    frozen = trace_freeze_fuse(converted, example)
    counts = int8_layers(frozen.graph, frozen.graph_for(example))
    if counts["int8_layers"] == 0:
        raise RuntimeError("IPEX conversion left no int8 convolution or linear in the graph (quantized nothing)")
    coverage = {**weight_totals(model), **counts}
    observer = mapping.global_qconfig.activation()  # the observer this mapping calibrates with, not the spec's flag
    details = {"config": {"qconfig_mapping": "ipex default_static_qconfig_mapping"
                                             + (", activations reduce_range=True" if spec["reduced_range"] else ""),
                          "activation_range": spec["activation_range"],
                          "activation_quant_range": [int(observer.quant_min), int(observer.quant_max)],
                          "traced": True, "frozen": True, "fused_before_save": True},
               "int8_coverage": coverage,
               "calibration": {"split": "train", "samples": seen, "seed": spec["seed"]}}
    return frozen, details


def build_bf16(spec: dict, model, example) -> tuple[object, dict]:
    import intel_extension_for_pytorch as ipex
    import torch

    optimized = ipex.optimize(model, dtype=torch.bfloat16)
    frozen = trace_freeze_fuse(optimized, example, autocast_dtype=torch.bfloat16)
    return frozen, {"config": {"ipex.optimize": "dtype=bfloat16", "autocast": "cpu bfloat16", "traced": True,
                               "frozen": True}}


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    import intel_extension_for_pytorch as ipex
    import torch

    from qexport.core.manifest import Precision

    torch.manual_seed(spec["seed"])
    started = time.perf_counter()
    model = load_model(spec)
    example = torch.from_numpy(np.load(spec["example"]))
    frozen, details = (build_int8 if spec["precision"] == Precision.INT8 else build_bf16)(spec, model, example)
    torch.jit.save(frozen, spec["output"], _extra_files={"qexport.json": json.dumps(spec["embedded_meta"])})
    import torchvision

    details["runtime_versions"] = {"torch": torch.__version__, "torchvision": torchvision.__version__,
                                   "intel_extension_for_pytorch": ipex.__version__}
    details["child_seconds"] = round(time.perf_counter() - started, 1)
    Path(spec["result"]).write_text(json.dumps(details))
    return 0


if __name__ == "__main__":  # qexport itself is importable through PYTHONPATH (runtimes.foreign.code_path)
    sys.exit(main(sys.argv[1]))
