"""ExecuTorch families: ``.pte`` programs for phones, boards and WebAssembly, lowered to XNNPACK.

``torch.export`` (a fixed batch: ExecuTorch's dynamic shapes are limited) → ``to_edge_transform_and_lower``
with the XNNPACK partitioner → ``.pte``. The int8 family quantizes with ExecuTorch's own XNNPACK
quantizer (per-channel symmetric weights, static activations) on the same seeded train-split
calibration images as every PTQ family. An operator XNNPACK does not take runs on ExecuTorch's
slow portable kernels, so the manifest records what share of the operators and multiply-adds the
delegate holds, and names the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qexport.core.errors import RuntimeMissing
from qexport.core.options import BudgetConfig, FixedBatchConfig
from qexport.exporter.calibration import calibrate
from qexport.exporter.graph_quant import exported_for_quantization, require_quantized
from qexport.exporter.registry import BuildContext, BuildDetails, register, train_calibration
from qexport.core.fsutil import atomic_write_bytes
from qexport.core.build_records import Delegation
from qexport.core.manifest import Precision

DELEGATE_CALL = "executorch_call_delegate"
BOOKKEEPING = {"getitem", "alloc", DELEGATE_CALL}  # graph plumbing, not operators that compute
MAC_OPS = {"convolution", "linear", "addmm", "mm", "bmm"}
INSTALL = "pip install 'qexport[executorch]' (executorch==1.5.1)"


def require_executorch() -> None:
    """Skip the family, naming the install, where ExecuTorch is absent (it is an optional extra)."""
    import importlib.util

    if importlib.util.find_spec("executorch") is None:
        raise RuntimeMissing(f"executorch is not installed; {INSTALL}")


def export_fixed(model: nn.Module, ctx: BuildContext, batch: int) -> torch.export.ExportedProgram:
    """Export at the program's one batch size (``--executorch-batch``)."""
    example = ctx.example[:1].expand(batch, *ctx.example.shape[1:]).contiguous()
    return torch.export.export(model, (example,))


def xnnpack_quantizer(keep_float: tuple[str, ...] = ()):
    """ExecuTorch's XNNPACK quantizer (the torch.ao copy is deprecated): per-channel symmetric int8
    weights; the modules in ``keep_float`` get no config and stay fp32 (the budget's fallback)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                           get_symmetric_quantization_config)

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    if keep_float:  # set_module_name(name, None) is refused ("not supported yet"): a node filter instead
        quantizer.set_filter_function(outside_modules(keep_float))
    return quantizer


def outside_modules(names: tuple[str, ...]):
    """A node filter that is False for nodes of the modules ``names`` (so they are not quantized)."""
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

    inside = [get_module_name_filter(name) for name in names]
    return lambda node: not any(matches(node) for matches in inside)


def lower_and_save(exported: torch.export.ExportedProgram, path: Path) -> Delegation:
    """Lower to XNNPACK, write the ``.pte`` and say what the delegate holds."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    edge = to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()])
    delegation = delegation_of(edge.exported_program().graph_module)
    atomic_write_bytes(path, edge.to_executorch().buffer)
    return delegation


def op_name(node: torch.fx.Node) -> str:
    """'convolution' for aten.convolution.default and its edge-dialect twin."""
    parts = str(getattr(node.target, "__name__", node.target)).split(".")
    if parts[0] == "aten" and len(parts) > 1:
        return parts[1]
    return ".".join(parts[:2]) if len(parts) > 2 else parts[0]  # another namespace: say which


def macs(node: torch.fx.Node) -> int:
    """Multiply-adds of a convolution or matrix product, from its output shape and weight; 0 for the rest."""
    name = op_name(node)
    out = node.meta.get("val")
    if name not in MAC_OPS or not isinstance(out, torch.Tensor):
        return 0
    weight = node.args[1].meta.get("val") if name in ("convolution", "linear") else node.args[-1].meta.get("val")
    if not isinstance(weight, torch.Tensor):
        return 0
    if name == "convolution":
        return int(out.numel() * weight[0].numel())  # per output element: in_channels/groups × kernel
    return int(out.numel() * weight.shape[-2 if name in ("mm", "bmm", "addmm") else -1])


def computes(node: torch.fx.Node) -> bool:
    """An operator that does work per call: not graph plumbing, and not a copy of a scalar constant
    (ExecuTorch keeps a few 0-d dtype copies outside the delegate; they cost nothing)."""
    if node.op != "call_function" or op_name(node) in BOOKKEEPING:
        return False
    value = node.meta.get("val")
    return not (isinstance(value, torch.Tensor) and value.numel() <= 1)


def computing_nodes(graph_module: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in graph_module.graph.nodes if computes(n)]


def delegation_of(graph_module: torch.fx.GraphModule) -> Delegation:
    """Operators and multiply-adds inside XNNPACK against those left to portable kernels."""
    inside_ops = inside_macs = 0
    for name, module in graph_module.named_children():
        original = getattr(module, "original_module", None)  # a lowered XNNPACK subgraph
        if original is not None:
            nodes = computing_nodes(original.graph_module)
            inside_ops += len(nodes)
            inside_macs += sum(macs(n) for n in nodes)
    outside = computing_nodes(graph_module)
    return Delegation(backend="XnnpackBackend", delegated_ops=inside_ops, portable_ops=len(outside),
                      delegated_macs=inside_macs, portable_macs=sum(macs(n) for n in outside),
                      portable_op_names=sorted({op_name(n) for n in outside}))


def delegation_notes(delegation: Delegation) -> list[str]:
    if not delegation.portable_ops:
        return [f"every operator runs in XNNPACK ({delegation.delegated_ops} operators)"]
    return [f"{delegation.portable_ops} operators run on ExecuTorch's portable kernels, not XNNPACK "
            f"({', '.join(delegation.portable_op_names)}): expect them to dominate the latency"]


def build_details(delegation: Delegation, batch: int, **extra) -> BuildDetails:
    config = {"batch": batch, "partitioner": "XnnpackPartitioner", **extra.pop("config", {})}
    return BuildDetails(config=config, notes=delegation_notes(delegation), delegation=delegation, fixed_batch=batch, **extra)


@dataclass(frozen=True)
class FixedBatchInt8Config(BudgetConfig, FixedBatchConfig):
    """executorch-int8: held to the budget, exported for one batch size."""


@register("executorch-fp32", variant="fp32", format="executorch", extension=".pte", precision=Precision.FP32,
          runtime="executorch", method="torch.export (fixed batch) → to_edge_transform_and_lower (XNNPACK) → .pte",
          config=FixedBatchConfig)
def build_executorch_fp32(ctx: BuildContext, config: FixedBatchConfig, path: Path) -> BuildDetails:
    require_executorch()
    batch = config.executorch_batch
    return build_details(lower_and_save(export_fixed(ctx.fresh_model(), ctx, batch), path), batch)


@register("executorch-int8", variant="int8", format="executorch", extension=".pte", precision=Precision.INT8,
          runtime="executorch",
          method="torch.export → XNNPACKQuantizer PTQ (per-channel symmetric) → convert_pt2e → XNNPACK → .pte",
          config=FixedBatchInt8Config, fallback=True)
def build_executorch_int8(ctx: BuildContext, config: FixedBatchInt8Config, path: Path) -> BuildDetails:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    require_executorch()
    # Calibrated as a dynamic-batch graph (batches of 64), then exported again at the program's batch.
    prepared = prepare_pt2e(exported_for_quantization(ctx), xnnpack_quantizer(ctx.keep_float))
    seen = calibrate(prepared, ctx, "calibrate executorch")
    converted = convert_pt2e(prepared)
    coverage = require_quantized(converted, "executorch-int8")
    batch = config.executorch_batch
    return build_details(lower_and_save(export_fixed(converted, ctx, batch), path), batch, int8_coverage=coverage,
                         calibration=train_calibration(ctx, seen),
                         config={"quantizer": "XNNPACKQuantizer (per-channel symmetric weights, static activations)"})
