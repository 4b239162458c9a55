"""PyTorch 2 export families, lowered and packaged with AOTInductor (``.pt2``).

A pt2e-converted graph run as-is executes reference (de)quantize ops and is far *slower* than
fp32; that is the trap behind published "no speed-up" numbers. We never ship it: every family
here re-exports the converted model and compiles it with AOTInductor (freezing on, so int8
weights are pre-packed into oneDNN kernels). The package loads with
``torch._inductor.aoti_load_package`` and no model code.
"""

from __future__ import annotations

import contextlib
import copy
import re
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qexport.core.options import QatInt8Config, TargetConfig, TargetedInt8Config
from qexport.exporter.registry import BuildContext, BuildDetails, register, train_calibration
from qexport.core.build_records import Int8Coverage
from qexport.core.manifest import Precision
from qexport.core.errors import QExportError
from qexport.core.hardware import int8_activation_range
from qexport.training.models import file_stem
from qexport.core.progress import say

MAX_BATCH = 1024
COMPILED_NOTE = ("AOTInductor code is compiled for the --target-cpu ISA recorded under requirements and this exact "
                 "torch version; generated C++ sources are left out of the package (only the compiled .so runs)")


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


CONV_BN_HELPERS = ("_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper")  # prepare_qat_pt2e's, convert_pt2e's


@contextlib.contextmanager
def conv_bn_patterns_only_for_present_convolutions() -> Iterator[None]:
    """Within this block, torchao's QAT ``prepare_qat_pt2e`` (conv-bn fusion) and ``convert_pt2e``
    (conv-bn folding) match patterns only for the convolution kinds the graph contains.

    Each tries conv1d, conv2d, conv_transpose1d and conv_transpose2d, exporting a set of pattern
    graphs for each (~0.5 s an export): on a 2-core host 6 s of prepare and 23 s of convert went
    there for ResNet18, three quarters of it for kinds a 2-D classifier never has. A kind absent
    from the graph cannot match, so skipping it changes nothing but the time.
    """
    import torch.nn.functional as F
    from torchao.quantization.pt2e import qat_utils

    aten = torch.ops.aten
    kinds = {F.conv1d: aten.conv1d, F.conv2d: aten.conv2d,
             F.conv_transpose1d: aten.conv_transpose1d, F.conv_transpose2d: aten.conv_transpose2d}
    originals = {name: getattr(qat_utils, name) for name in CONV_BN_HELPERS}

    def only_if_present(original):
        def helper(m: torch.fx.GraphModule, conv_fn, example_inputs, is_cuda: bool) -> torch.fx.GraphModule:
            packet = kinds.get(conv_fn)
            if packet is not None and not any(getattr(node.target, "overloadpacket", None) is packet
                                              for node in m.graph.nodes):
                return m
            return original(m, conv_fn, example_inputs, is_cuda=is_cuda)
        return helper

    for name, original in originals.items():
        setattr(qat_utils, name, only_if_present(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(qat_utils, name, original)


def export_dynamic(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """Export with a dynamic batch (a batch-2 example avoids 0/1 specialisation of the dim)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    sample = example.expand(2, *example.shape[1:]).contiguous()
    return torch.export.export(model, (sample,), dynamic_shapes=({0: batch},))


def x86_quantizer(is_qat: bool = False, keep_float: tuple[str, ...] = (), reduced_range: bool = False):
    """The x86 Inductor quantizer; the modules named in ``keep_float`` get no quantization config,
    so their operators stay fp32 (the accuracy budget's per-layer fallback). ``reduced_range``:
    7-bit activations, for CPUs without VNNI (see ``hardware.int8_may_run_without_vnni``)."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq

    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config(is_qat=is_qat, reduce_range=reduced_range))
    for name in keep_float:
        quantizer.set_module_name_qconfig(name, None)
    return quantizer


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


PREPACK_NOTE = ("fp32 convolution weights are pre-packed for oneDNN at build time (batch hint 2); with a dynamic "
                "batch, Inductor would otherwise re-pack them on every call -- several times slower at batch 1")


PREPACKED_AT_BUILD = "build time, batch hint 2"  # the manifest's conv_weight_prepack when the pre-pack applied


def prepack_notes(compiled: dict, has_float_convolutions: bool) -> list[str]:
    """The pre-pack note, where the package has fp32 convolutions and the pre-pack applied."""
    return [PREPACK_NOTE] if has_float_convolutions and compiled.get("conv_weight_prepack") == PREPACKED_AT_BUILD else []


INDUCTOR_CONFIG = {
    "freezing": True,  # constant-fold weights and pre-pack int8 convolutions for oneDNN
    "aot_inductor.enable_line_tables": False,  # -g1 line tables add ~1.3 MB to a deployed .so
}


@contextlib.contextmanager
def prepacked_dynamic_convolutions() -> Iterator[bool]:
    """Let Inductor pre-pack fp32 conv weights although the batch is dynamic.

    For a symbolic input size, Inductor's mkldnn pass skips weight pre-packing ("for dynamic
    shape case, we need to pack weight in runtime"), so every call reorders every weight: the
    dynamic-batch fp32 package ran 10.8 ms at batch 1 here vs 2.6 ms when pre-packed with the
    batch's size hint. oneDNN re-lays out a pre-packed weight itself when another batch needs
    another layout, so results are identical at every batch (tested). Yields False, changing
    nothing, where this torch's internals differ from the ones this was written against.
    """
    try:
        from torch._inductor.fx_passes import mkldnn_fusion as fusion
        from torch.fx.experimental.symbolic_shapes import optimization_hint

        original_free, original_op = fusion.has_free_symbols, fusion._get_mkldnn_device_op
        cpu_op_class = type(original_op("cpu"))
    except (ImportError, AttributeError, RuntimeError):
        yield False
        return

    class HintedCpuOp(cpu_op_class):
        def pack_conv_weight(self, graph, is_transposed, weight, constant_args, input_size):
            size = [optimization_hint(s) if isinstance(s, torch.SymInt) else s for s in input_size]
            return super().pack_conv_weight(graph, is_transposed, weight, constant_args, size)

    def free_symbols_except_conv_inputs(value) -> bool:
        if isinstance(value, (torch.Size, tuple, list)) and len(value) == 4:  # an NCHW conv input size
            return False
        return original_free(value)

    fusion.has_free_symbols = free_symbols_except_conv_inputs
    fusion._get_mkldnn_device_op = lambda device: HintedCpuOp() if device == "cpu" else original_op(device)
    try:
        yield True
    finally:
        fusion.has_free_symbols, fusion._get_mkldnn_device_op = original_free, original_op


def package(model: nn.Module, ctx: BuildContext, config: TargetConfig, path: Path, variant: str, prepack_fp32: bool = False) -> dict:
    """Re-export and compile with AOTInductor for ``--target-cpu``; returns what was compiled
    (seconds, vector ISA, -march, and for fp32 whether conv weights were pre-packed at build time).

    Compiled in a scratch folder under the artifact's real name, because the package's internal
    folder is named after the file it is written to (the atomic temporary name must not leak).
    """
    target = config.target
    say(f"  compiling {variant} with AOTInductor for {target.name} (tens of seconds)…")
    started = time.perf_counter()
    # Inductor applies freezing (constant folding, int8 weight pre-packing) only without autograd.
    with torch.no_grad():
        program = export_dynamic(model, ctx.example)
    config = {**INDUCTOR_CONFIG, **target.inductor_config()}
    with tempfile.TemporaryDirectory(prefix="qexport-aoti-") as scratch, torch.no_grad():
        staged = Path(scratch) / f"{file_stem(ctx.model_name)}.{variant}.pt2"
        prepack = prepacked_dynamic_convolutions() if prepack_fp32 else contextlib.nullcontext(False)
        with torch._inductor.config.patch(config), prepack as prepacked:
            vec_isa = compiled_vector_isa()
            torch._inductor.aoti_compile_and_package(program, package_path=str(staged))
        code_sha256 = generated_code_sha256(staged)
        copy_without_sources(staged, path)
    compiled = {"compile_seconds": round(time.perf_counter() - started, 1), "target_cpu": target.name,
                "vector_isa": vec_isa, "march": target.march or "native", "generated_code_sha256": code_sha256}
    if prepack_fp32:
        compiled["conv_weight_prepack"] = (PREPACKED_AT_BUILD if prepacked
                                           else "run time (Inductor internals changed)")
    return compiled


def compiled_vector_isa() -> str:
    """The vector ISA Inductor generates kernels for under the current config (e.g. 'avx2')."""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    return str(pick_vec_isa()) or "scalar"


ADDRESS = re.compile(rb" at 0x[0-9a-f]+")
OPAQUE = b".opaque_metadata = "  # serialized oneDNN layouts of pre-packed weights: data, not code


def generated_code_sha256(package_file: Path) -> str:
    """One digest over the C++ Inductor generated (kernels and wrapper), independent of file names.

    The same program compiled under the same torch and options gives the same code; a family
    whose result depends on what was compiled before it in the process would not (test_build).
    Blank and comment lines are left out (Inductor appends the compile command, with its cache
    paths, to sources it serves from its cache), and so are the object addresses Inductor writes
    into its shape-check messages ("<function qconv at 0x7faf…>") and the serialized metadata of
    pre-packed weight blobs, which differ between a fresh compile and one served from the cache.
    """
    import hashlib

    with zipfile.ZipFile(package_file) as archive:
        sources = [b"\n".join(ADDRESS.sub(b" at 0x", line) for line in archive.read(name).splitlines()
                              if line.strip() and not line.lstrip().startswith(b"//") and OPAQUE not in line)
                   for name in archive.namelist() if name.endswith(".cpp")]
    digest = hashlib.sha256()
    for code in sorted(sources):  # file names are hashes of the (address-laden) code: order by content
        digest.update(code)
    return digest.hexdigest()


def copy_without_sources(source: Path, target: Path) -> None:
    """Copy the package minus the generated C++ sources: the loader runs the compiled .so and
    never reads them, and they are ~0.25 MB of a ~12 MB int8 package."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if not info.filename.endswith(".cpp"):
                zout.writestr(info, zin.read(info.filename))


def exported_for_quantization(ctx: BuildContext) -> torch.fx.GraphModule:
    return export_dynamic(unshare_modules(ctx.fresh_model(), ctx.example), ctx.example).module()


def calibrate_graph(prepared: nn.Module, ctx: BuildContext) -> int:
    from qexport.exporter.torchscript import calibrate

    return calibrate(prepared, ctx, "calibrate pt2e")


@register("pt2e-int8", variant="int8", format="aoti", extension=".pt2", precision=Precision.INT8, runtime="aoti",
          method="torch.export → torchao X86InductorQuantizer PTQ (per-channel) → convert_pt2e → AOTInductor package",
          config=TargetedInt8Config, compiled=True, fallback=True,
          recipe=2)  # 2: float layers pre-packed at build time; 7-bit activations for targets without VNNI
def build_pt2e_int8(ctx: BuildContext, config: TargetedInt8Config, path: Path) -> BuildDetails:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    reduced = config.int8_reduced_range
    prepared = prepare_pt2e(exported_for_quantization(ctx), x86_quantizer(keep_float=ctx.keep_float, reduced_range=reduced))
    seen = calibrate_graph(prepared, ctx)
    converted = convert_pt2e(prepared)
    coverage = require_quantized(converted, "pt2e-int8")
    # The layers the budget keeps in float are fp32 convolutions like pt2e-fp32's: without build-time
    # packing they re-pack their weights on every call (ResNet18 with 16 float layers: 10.8 ms at batch 1, 1.9 ms pre-packed).
    compiled = package(converted, ctx, config, path, "int8", prepack_fp32=True)
    return BuildDetails(config={"quantizer": "X86InductorQuantizer default (per-channel weights, static activations)",
                                "activation_range": int8_activation_range(reduced), **INDUCTOR_CONFIG, "max_batch": MAX_BATCH,
                                **compiled},
                        int8_coverage=coverage, notes=[COMPILED_NOTE] + prepack_notes(compiled, bool(ctx.keep_float)),
                        calibration=train_calibration(ctx, seen))


@dataclass(frozen=True)
class TargetedQatConfig(QatInt8Config, TargetConfig):
    """pt2e QAT: fine-tuned, and compiled for --target-cpu."""


@register("pt2e-int8-qat", variant="int8-qat", format="aoti", extension=".pt2", precision=Precision.INT8, runtime="aoti",
          method="torch.export → prepare_qat_pt2e (X86InductorQuantizer) → fake-quant fine-tune → convert → AOTInductor",
          config=TargetedQatConfig, compiled=True,
          recipe=2)  # 2: 7-bit activations for targets without VNNI
def build_pt2e_int8_qat(ctx: BuildContext, config: TargetedQatConfig, path: Path) -> BuildDetails:
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from qexport.training.train import fine_tune, training_memory_format

    reduced = config.int8_reduced_range
    with conv_bn_patterns_only_for_present_convolutions():
        prepared = prepare_qat_pt2e(exported_for_quantization(ctx), x86_quantizer(is_qat=True, reduced_range=reduced))
    allow_exported_model_train_eval(prepared)  # exported graphs refuse .train()/.eval() otherwise
    history = fine_tune(prepared, ctx.data, epochs=config.qat_epochs, lr=config.qat_lr,
                        seed=ctx.shared.seed, show_progress=ctx.show_progress, description="pt2e QAT fine-tune",
                        layout=training_memory_format(ctx.model))
    prepared.eval()
    with conv_bn_patterns_only_for_present_convolutions():
        converted = convert_pt2e(prepared)
    coverage = require_quantized(converted, "pt2e-int8-qat")
    compiled = package(converted, ctx, config, path, "int8-qat")
    return BuildDetails(config={"quantizer": "X86InductorQuantizer QAT config", "epochs": config.qat_epochs,
                                "activation_range": int8_activation_range(reduced),
                                "lr": config.qat_lr, "fine_tune_split": "train", **INDUCTOR_CONFIG, **compiled},
                        int8_coverage=coverage, fine_tune=history, notes=[COMPILED_NOTE])


@register("pt2e-fp32", variant="fp32", format="aoti", extension=".pt2", precision=Precision.FP32, runtime="aoti",
          method="torch.export (dynamic batch) → AOTInductor package (freezing)",
          config=TargetConfig, compiled=True)
def build_pt2e_fp32(ctx: BuildContext, config: TargetConfig, path: Path) -> BuildDetails:
    compiled = package(ctx.fresh_model(), ctx, config, path, "fp32", prepack_fp32=True)
    return BuildDetails(config={**INDUCTOR_CONFIG, "max_batch": MAX_BATCH, **compiled},
                        notes=[COMPILED_NOTE] + prepack_notes(compiled, has_float_convolutions=True))


def require_quantized(converted: torch.fx.GraphModule, key: str) -> Int8Coverage:
    coverage = count_quantized(converted)
    if not coverage.quantized_layers:
        raise QExportError(f"{key}: the quantizer matched no convolution or linear layer; nothing was quantized.")
    return coverage
