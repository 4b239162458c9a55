"""PyTorch 2 export families, lowered and packaged with AOTInductor (``.pt2``).

A pt2e-converted graph run as-is executes reference (de)quantize ops and is far *slower* than
fp32; that is the trap behind published "no speed-up" numbers. We never ship it: every family
here re-exports the converted model and compiles it with AOTInductor (freezing on, so int8
weights are pre-packed into oneDNN kernels). The package loads with
``torch._inductor.aoti_load_package`` and no model code. The graph the int8 families quantize
comes from ``graph_quant.py`` (shared with executorch-int8); the two changes to torch's and
torchao's internals they make while building are declared in ``patches.py``.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from qexport.core.options import QatInt8Config, TargetConfig, TargetedInt8Config
from qexport.exporter.calibration import calibrate
from qexport.exporter.graph_quant import MAX_BATCH, export_dynamic, exported_for_quantization, require_quantized
from qexport.exporter.patches import conv_bn_patterns_only_for_present_convolutions, prepacked_dynamic_convolutions
from qexport.exporter.registry import BuildContext, BuildDetails, register, train_calibration
from qexport.core.manifest import Precision
from qexport.core.hardware import int8_activation_range
from qexport.training.models import file_stem
from qexport.core.progress import say

COMPILED_NOTE = ("AOTInductor code is compiled for the --target-cpu ISA recorded under requirements and this exact "
                 "torch version; generated C++ sources are left out of the package (only the compiled .so runs)")


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


@register("pt2e-int8", variant="int8", format="aoti", extension=".pt2", precision=Precision.INT8, runtime="aoti",
          method="torch.export → torchao X86InductorQuantizer PTQ (per-channel) → convert_pt2e → AOTInductor package",
          config=TargetedInt8Config, compiled=True, fallback=True,
          recipe=2)  # 2: float layers pre-packed at build time; 7-bit activations for targets without VNNI
def build_pt2e_int8(ctx: BuildContext, config: TargetedInt8Config, path: Path) -> BuildDetails:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    reduced = config.int8_reduced_range
    prepared = prepare_pt2e(exported_for_quantization(ctx), x86_quantizer(keep_float=ctx.keep_float, reduced_range=reduced))
    seen = calibrate(prepared, ctx, "calibrate pt2e")
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

