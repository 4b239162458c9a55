"""TorchScript families: the classic baseline and eager-mode int8 done properly.

Static/QAT int8 use torchvision's quantizable model variants (QuantStub/DeQuantStub, a
quantization-friendly residual add, ``fuse_model``) with the ``x86`` backend and per-channel
weights, then trace + freeze so the deployed file holds fused int8 kernels and no fp32 copy.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from qexport.exporter.calibration import calibrate
from qexport.exporter.capture import traced_or_refused
from qexport.exporter.half import HalfPrecision
from qexport.core.options import BudgetConfig, FamilyConfig, QatInt8Config
from qexport.exporter.registry import BuildContext, BuildDetails, register, train_calibration
from qexport.core.build_records import Int8Coverage
from qexport.core.manifest import Precision
from qexport.runtimes.results import BASELINE
from qexport.core.errors import QExportError

QUANT_ENGINE = "x86"


def save_traced(module: nn.Module, example: torch.Tensor, path: Path, meta: dict) -> None:
    """Trace, freeze and save with a small JSON description embedded in the file (a branch on a
    tensor value is refused: tracing would keep only the branch the example took)."""
    with torch.inference_mode(False), torch.no_grad():
        traced = traced_or_refused(f"torchscript-{meta['variant']}", module.eval(), example)
        frozen = torch.jit.freeze(traced.eval())
    torch.jit.save(frozen, str(path), _extra_files={"qexport.json": json.dumps(meta)})


def embedded_meta(ctx: BuildContext, variant: str) -> dict:
    return {"model": ctx.model_name, "variant": variant, "classes": ctx.data.classes,
            "mean": list(ctx.data.mean), "std": list(ctx.data.std)}


def weight_coverage(model: nn.Module) -> Int8Coverage:
    """How many weight elements live in quantized modules vs all weights: "quantized nothing" shows."""
    quantized = total = 0
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if callable(weight):  # quantized modules expose weight() returning a qtensor
            w = weight()
            if isinstance(w, torch.Tensor):
                quantized += w.numel()
                total += w.numel()
        elif isinstance(weight, torch.Tensor) and not list(module.children()):
            total += weight.numel()
    return Int8Coverage.of_weights(quantized, total)


@register(BASELINE, variant="fp32", format="torchscript", extension=".torchscript.pt",
          precision=Precision.FP32, runtime="torchscript", method="torch.jit.trace + torch.jit.freeze",
          devices=("cpu", "cuda"))
def build_fp32(ctx: BuildContext, config: FamilyConfig, path: Path) -> BuildDetails:
    save_traced(ctx.fresh_model(), ctx.example, path, embedded_meta(ctx, "fp32"))
    return BuildDetails(config={"frozen": True})


@register("torchscript-fp16", variant="fp16", format="torchscript", extension=".torchscript.pt",
          precision=Precision.FP16, runtime="torchscript", method="model.half() (fp32 I/O kept), trace + freeze",
          devices=("cuda", "cpu"),
          cpu_note="fp16 is a GPU format: CPU runs it through slow fallback kernels; compare it on --device cuda")
def build_fp16(ctx: BuildContext, config: FamilyConfig, path: Path) -> BuildDetails:
    # Traced on CPU so the file loads anywhere; torch.jit.load(map_location="cuda") moves it to GPU.
    save_traced(HalfPrecision(ctx.fresh_model()), ctx.example, path, embedded_meta(ctx, "fp16"))
    return BuildDetails(config={"weights": "float16", "io": "float32"})


@register("torchscript-int8-dynamic", variant="int8-dynamic", format="torchscript",
          extension=".torchscript.pt", precision=Precision.INT8, runtime="torchscript",
          method="torch.ao.quantization.quantize_dynamic on nn.Linear, trace + freeze", config=BudgetConfig)
def build_int8_dynamic(ctx: BuildContext, config: BudgetConfig, path: Path) -> BuildDetails:
    torch.backends.quantized.engine = QUANT_ENGINE
    model = torch.ao.quantization.quantize_dynamic(ctx.fresh_model(), {nn.Linear}, dtype=torch.qint8)
    coverage = weight_coverage(model)
    save_traced(model, ctx.example, path, embedded_meta(ctx, "int8-dynamic"))
    return BuildDetails(
        config={"modules": ["Linear"], "dtype": "qint8", "quantized_engine": QUANT_ENGINE},
        quantized_engine=QUANT_ENGINE, int8_coverage=coverage,
        notes=[f"Dynamic quantization only covers nn.Linear/RNN layers: here {coverage.ratio:.2%} of the weights. "
               "Convolutions stay fp32, so size and speed barely change; use int8-static, int8-qat or onnx int8 for CNNs."])


def quantizable_twins() -> list[str]:
    """The torchvision models with a quantization-ready twin (QuantStub, fusable blocks)."""
    import torchvision.models.quantization as tvq

    from qexport.training.models import classification_models

    return [name for name in classification_models() if callable(getattr(tvq, name, None))]


def twin_problem(model_name: str) -> str | None:
    """Why eager int8 does not apply to ``model_name`` (it has no quantizable twin), or None."""
    if model_name in quantizable_twins():
        return None
    return (f"eager-mode int8 needs torchvision's quantizable twin of the model and {model_name} has none "
            f"(only {', '.join(quantizable_twins())}); pt2e-int8, onnx-int8 and openvino-int8 quantize any model")


def quantizable_copy(ctx: BuildContext) -> nn.Module:
    """torchvision's quantization-ready twin of the model, carrying the trained weights."""
    import torchvision.models.quantization as tvq

    problem = twin_problem(ctx.model_name)
    if problem:
        raise QExportError(f"{problem}.")
    model = getattr(tvq, ctx.model_name)(weights=None, quantize=False, num_classes=ctx.data.num_classes)
    try:
        model.load_state_dict(ctx.model.state_dict(), strict=True)
    except RuntimeError as err:
        raise QExportError(f"The trained {ctx.model_name} weights do not fit torchvision's quantizable variant ({err}).") from err
    return model


def convert_and_save(model: nn.Module, ctx: BuildContext, path: Path, variant: str) -> Int8Coverage:
    model.eval()
    torch.ao.quantization.convert(model, inplace=True)
    coverage = weight_coverage(model)
    if not coverage.quantized_weights:
        raise QExportError(f"{variant}: conversion quantized no layer; the model is not quantization-ready.")
    save_traced(model, ctx.example, path, embedded_meta(ctx, variant))
    return coverage


class FloatIsland(nn.Sequential):
    """A layer kept in float inside an eager int8 model: its quantized input is dequantized, the
    layer runs in fp32, and its output is quantized again (with its own calibrated observer)."""

    def __init__(self, layer: nn.Module):
        layer.qconfig = None  # its own attribute wins over the parent's when qconfigs propagate
        super().__init__(torch.ao.quantization.DeQuantStub(), layer, torch.ao.quantization.QuantStub())


def keep_in_float(model: nn.Module, layers: tuple[str, ...]) -> list[str]:
    """Wrap each named (already fused) layer in a :class:`FloatIsland`; returns the names not found."""
    missing = []
    for name in layers:
        parent_name, _, attribute = name.rpartition(".")
        try:
            parent = model.get_submodule(parent_name)
            layer = getattr(parent, attribute)
        except AttributeError:
            missing.append(name)
            continue
        setattr(parent, attribute, FloatIsland(layer))
    return missing


@register("torchscript-int8-static", variant="int8-static", format="torchscript",
          extension=".torchscript.pt", precision=Precision.INT8, runtime="torchscript",
          method="eager PTQ: fuse conv+bn+relu, x86 per-channel qconfig, calibrate, convert, trace + freeze",
          config=BudgetConfig, fallback=True, model_support=twin_problem)
def build_int8_static(ctx: BuildContext, config: BudgetConfig, path: Path) -> BuildDetails:
    torch.backends.quantized.engine = QUANT_ENGINE
    model = quantizable_copy(ctx).eval()
    model.fuse_model()
    model.qconfig = torch.ao.quantization.get_default_qconfig(QUANT_ENGINE)
    missing = keep_in_float(model, ctx.keep_float)
    torch.ao.quantization.prepare(model, inplace=True)
    seen = calibrate(model, ctx)
    coverage = convert_and_save(model, ctx, path, "int8-static")
    return BuildDetails(config={"qconfig": f"default {QUANT_ENGINE} (per-channel symmetric weights, histogram "
                                           "activations)", "fused": "conv+bn(+relu)"},
                        float_not_found=missing,
                        quantized_engine=QUANT_ENGINE, int8_coverage=coverage, calibration=train_calibration(ctx, seen))


@register("torchscript-int8-qat", variant="int8-qat", format="torchscript",
          extension=".torchscript.pt", precision=Precision.INT8, runtime="torchscript",
          method="eager QAT: fuse, x86 QAT qconfig, fine-tune with fake quant, convert, trace + freeze",
          config=QatInt8Config, model_support=twin_problem)
def build_int8_qat(ctx: BuildContext, config: QatInt8Config, path: Path) -> BuildDetails:
    from qexport.training.train import fine_tune

    torch.backends.quantized.engine = QUANT_ENGINE
    model = quantizable_copy(ctx).train()
    model.fuse_model(is_qat=True)
    model.qconfig = torch.ao.quantization.get_default_qat_qconfig(QUANT_ENGINE)
    torch.ao.quantization.prepare_qat(model, inplace=True)

    def freeze_late(epoch: int) -> None:  # standard recipe: stop observers and BN stats for the last epoch
        if epoch + 2 == config.qat_epochs:
            model.apply(torch.ao.quantization.disable_observer)
            model.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)

    history = fine_tune(model, ctx.data, epochs=config.qat_epochs, lr=config.qat_lr,
                        seed=ctx.shared.seed, show_progress=ctx.show_progress, description="QAT fine-tune",
                        on_epoch_end=freeze_late)
    coverage = convert_and_save(model, ctx, path, "int8-qat")
    return BuildDetails(config={"qconfig": f"default {QUANT_ENGINE} QAT", "epochs": config.qat_epochs,
                                "lr": config.qat_lr, "fine_tune_split": "train"},
                        quantized_engine=QUANT_ENGINE, int8_coverage=coverage, fine_tune=history)
