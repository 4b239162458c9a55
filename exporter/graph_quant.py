"""The graph a pt2e quantizer works on, and the check that it quantized something.

Shared by the families that quantize a ``torch.export`` graph with a pt2e quantizer
(``prepare_pt2e`` / ``convert_pt2e``): pt2e-int8 and pt2e-int8-qat (X86InductorQuantizer) and
executorch-int8 (XNNPACKQuantizer). Before export, each reused stateless module is given one copy
per call site (:func:`unshare_modules`), which the quantizers need; after conversion, a graph
with no int8 convolution or linear layer fails the build (:func:`require_quantized`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from qexport.core.build_records import Int8Coverage
from qexport.core.errors import QExportError
from qexport.exporter.registry import BuildContext

MAX_BATCH = 1024


def unshare_modules(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """Give every call of a stateless module (ReLU, pooling...) its own instance.

    torchvision's BasicBlock/Bottleneck call one ``self.relu`` twice; X86InductorQuantizer then
    sees one module with two outputs and fails ("Input partition has more than one output
    node"). One eager forward pass on ``example`` counts the calls, and each reused stateless
    module becomes ``CallSiteCopies``. Modules with parameters or buffers are left shared (copying
    them would duplicate weights). Counting calls on the real model replaced an FX symbolic-trace
    rewrite: FX cannot trace a branch on a feature map's size (timm's efficientvit) nor timm's levit
    (``torch.Size()`` of traced values), and torch.export needs neither to be rewritten. Every
    forward pass makes the same calls in the same order, so the k-th call always meets copy k.
    """
    for name, calls in reused_stateless_modules(model, example).items():
        shared = model.get_submodule(name)
        stand_in = CallSiteCopies(shared, calls)
        for parent in model.modules():  # every attribute naming the shared module (act2 = act1)
            for attribute, child in list(parent._modules.items()):  # named_children() skips aliases
                if child is shared:
                    setattr(parent, attribute, stand_in)
    return model


def reused_stateless_modules(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """The stateless modules that one eager forward pass on ``example`` calls more than once, with
    their number of calls (outermost only: a reused container's children are copied with it)."""
    calls: dict[str, int] = {}
    hooks = [module.register_forward_pre_hook(lambda *_, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
             for name, module in model.named_modules()
             if name and not any(True for _ in module.parameters()) and not any(True for _ in module.buffers())]
    training = model.training
    try:
        with torch.no_grad():
            model.eval()(example)  # in eval mode: a counting pass must not move batch-norm statistics
    finally:
        model.train(training)
        for hook in hooks:
            hook.remove()
    reused = {name: count for name, count in calls.items() if count > 1}
    return {name: count for name, count in sorted(reused.items())
            if not any(name.startswith(outer + ".") for outer in reused)}


class CallSiteCopies(nn.Module):
    """Stands in for a stateless module called ``calls`` times per forward pass: call k runs copy k,
    so torch.export records each call site under its own module path (``<name>.copies.<k>``) and the
    quantizer gives each its own partition."""

    def __init__(self, module: nn.Module, calls: int):
        super().__init__()
        self.copies = nn.ModuleList(copy.deepcopy(module) for _ in range(calls))
        self.next_call = 0

    def forward(self, *args, **kwargs):
        site = self.copies[self.next_call % len(self.copies)]
        self.next_call += 1
        return site(*args, **kwargs)


def export_dynamic(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """Export with a dynamic batch (a batch-2 example avoids 0/1 specialisation of the dim)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    sample = example.expand(2, *example.shape[1:]).contiguous()
    return torch.export.export(model, (sample,), dynamic_shapes=({0: batch},))


def exported_for_quantization(ctx: BuildContext) -> torch.fx.GraphModule:
    """A fresh copy of the model, its stateless modules unshared, exported with a dynamic batch
    (calibration runs batches of 64 through it)."""
    return export_dynamic(unshare_modules(ctx.fresh_model(), ctx.example), ctx.example).module()


def count_quantized(graph_module: torch.fx.GraphModule) -> Int8Coverage:
    """Count convolution/linear nodes whose weight is dequantized from int8: 0 must fail."""
    weight_dq = {"dequantize_per_channel", "dequantize_per_tensor"}
    compute = {"conv2d", "linear", "conv1d", "conv3d"}
    quantized = total = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or getattr(node.target, "__name__", "").split(".")[0] not in compute:
            continue
        total += 1
        weight = node.args[1] if len(node.args) > 1 else None
        producer = getattr(getattr(weight, "target", None), "__name__", "")
        if isinstance(weight, torch.fx.Node) and producer.split(".")[0] in weight_dq:
            quantized += 1
    return Int8Coverage.of_layers(quantized, total)


def require_quantized(converted: torch.fx.GraphModule, key: str) -> Int8Coverage:
    """The converted graph's int8 coverage; a quantizer that matched no layer fails the build."""
    coverage = count_quantized(converted)
    if not coverage.quantized_layers:
        raise QExportError(f"{key}: the quantizer matched no convolution or linear layer; nothing was quantized.")
    return coverage
