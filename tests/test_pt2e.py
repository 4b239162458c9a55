"""pt2e specifics: the shared-module fix on several architectures, structural int8 checks,
and that QAT fine-tuning really trains."""

from __future__ import annotations

import pytest
import torch
import torchvision

from qexport.core.manifest import CompiledWith
from qexport.exporter.graph_quant import (CallSiteCopies, count_quantized, export_dynamic, require_quantized,
                                          reused_stateless_modules, unshare_modules)
from qexport.exporter.pt2e import x86_quantizer
from qexport.core.errors import QExportError


def _prepared(model: torch.nn.Module, size: int):
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    example = torch.randn(1, 3, size, size)
    graph = export_dynamic(unshare_modules(model.eval(), example), example).module()
    prepared = prepare_pt2e(graph, x86_quantizer())
    prepared(torch.randn(2, 3, size, size))
    return prepared


@pytest.mark.parametrize("name,size", [("resnet18", 32), ("resnet50", 32), ("mobilenet_v3_small", 32)])
def test_shared_module_fix_lets_x86_quantizer_quantize(name, size):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    model = torchvision.models.get_model(name, weights=None, num_classes=10)
    converted = convert_pt2e(_prepared(model, size))
    coverage = count_quantized(converted)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    assert coverage.quantized_layers >= convs * 0.9, coverage  # "quantized nothing" cannot pass
    out = converted(torch.randn(3, 3, size, size))
    assert out.shape == (3, 10)


def test_without_the_fix_torchvision_resnet_fails():
    """Guards the reason the fix exists: if torch/torchao ever fix it upstream, this tells us."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    graph = export_dynamic(model, torch.randn(1, 3, 32, 32)).module()
    with pytest.raises(ValueError, match="more than one output node"):
        prepare_pt2e(graph, x86_quantizer())


def test_unshare_keeps_numerics():
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    unshared = unshare_modules(model, x)
    assert all(isinstance(block.relu, CallSiteCopies) for layer in (unshared.layer1, unshared.layer4) for block in layer)
    torch.testing.assert_close(unshared(x), expected)


def test_timm_levit_is_unshared_without_tracing_a_graph_that_no_longer_runs():
    """FX symbolic tracing failed on levit (``torch.Size()`` of proxies); counting calls needs no tracing."""
    pytest.importorskip("timm")
    from qexport.training.models import build_model

    model, x = build_model("timm:levit_128s", 10, image_size=32).eval(), torch.randn(2, 3, 32, 32)
    expected = model(x)
    torch.testing.assert_close(export_dynamic(unshare_modules(model, x[:1]), x[:1]).module()(x), expected)


def test_fp32_graph_counts_as_unquantized():
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    graph = export_dynamic(model, torch.randn(1, 3, 32, 32)).module()
    assert count_quantized(graph).quantized_layers == 0
    with pytest.raises(QExportError, match="nothing was quantized"):
        require_quantized(graph, "pt2e-int8")


def test_qat_fine_tune_changes_weights(tiny_data):
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    from qexport.training.train import fine_tune

    model = torchvision.models.resnet18(weights=None, num_classes=10)
    graph = export_dynamic(unshare_modules(model, torch.randn(1, 3, 32, 32)), torch.randn(1, 3, 32, 32)).module()
    prepared = prepare_qat_pt2e(graph, x86_quantizer(is_qat=True))
    allow_exported_model_train_eval(prepared)
    before = {k: v.clone() for k, v in prepared.state_dict().items() if v.is_floating_point()}
    small = tiny_data.limited(train=64, test=16)
    fine_tune(prepared, small, epochs=1, lr=0.01, batch_size=32, show_progress=False)
    changed = [k for k, v in prepared.state_dict().items() if k in before and not torch.equal(v, before[k])]
    assert any("weight" in k for k in changed)


def test_aoti_package_from_another_torch_is_refused_clearly():
    from qexport.runtimes.aoti import check_compatible

    with pytest.raises(QExportError, match="compiled with torch 2.8.0"):
        check_compatible(CompiledWith(torch="2.8.0"))
    with pytest.raises(QExportError, match="compiled for aarch64"):
        check_compatible(CompiledWith(torch=torch.__version__, machine="aarch64"))


@pytest.mark.parametrize("key", ["pt2e-fp32", "pt2e-int8"])
def test_fp32_package_prepacks_conv_weights_and_restores_inductor(built_artifacts, key):
    """pt2e-int8 too: the layers the accuracy budget keeps in float are fp32 convolutions, which
    would otherwise re-pack their weights on every call."""
    from torch._inductor.fx_passes import mkldnn_fusion

    from qexport.exporter.patches import prepacked_dynamic_convolutions

    _, outcomes = built_artifacts
    config = outcomes[key].manifest.config
    assert config["conv_weight_prepack"].startswith("build time")  # this torch: the fix applies
    before = (mkldnn_fusion.has_free_symbols, mkldnn_fusion._get_mkldnn_device_op)
    with prepacked_dynamic_convolutions() as applied:
        assert applied and mkldnn_fusion.has_free_symbols is not before[0]
    assert (mkldnn_fusion.has_free_symbols, mkldnn_fusion._get_mkldnn_device_op) == before


@pytest.mark.parametrize("helper", ["_fuse_conv_bn_qat_helper", "_fold_conv_bn_qat_helper"])
def test_qat_conv_bn_patterns_are_tried_only_for_the_convolution_kinds_the_graph_has(monkeypatch, helper):
    """torchao fuses (prepare) and folds (convert) QAT conv-bn by trying four convolution kinds, a
    set of pattern exports each; inside ``conv_bn_patterns_only_for_present_convolutions`` a kind
    absent from the graph is never tried, one that is present still is, and the original helper is
    back afterwards."""
    import torch.nn.functional as F
    from torchao.quantization.pt2e import qat_utils

    from qexport.exporter.patches import conv_bn_patterns_only_for_present_convolutions

    tried = []
    recorder = lambda m, conv_fn, example_inputs, is_cuda: tried.append(conv_fn) or m  # noqa: E731
    monkeypatch.setattr(qat_utils, helper, recorder)
    graph = torch.export.export(torch.nn.Conv2d(3, 4, 3).eval(), (torch.randn(1, 3, 8, 8),)).module()
    with conv_bn_patterns_only_for_present_convolutions():
        for kind in (F.conv1d, F.conv2d, F.conv_transpose1d, F.conv_transpose2d):
            assert getattr(qat_utils, helper)(graph, kind, (), is_cuda=False) is graph
    assert tried == [F.conv2d] and getattr(qat_utils, helper) is recorder


class SizeBranch(torch.nn.Module):
    """Branches on a feature map's size, as timm's efficientvit windows do: torch.export takes it
    (the size is static), FX symbolic tracing cannot (its sizes are proxies). With ``share``, a
    torchvision BasicBlock calls its one ReLU twice, which the x86 quantizer cannot partition."""

    def __init__(self, share_activation: bool = False):
        super().__init__()
        self.stem, self.act = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU()
        self.block = torchvision.models.resnet.BasicBlock(8, 8) if share_activation else torch.nn.Conv2d(8, 8, 3, padding=1)
        self.head = torch.nn.Linear(8, 10)

    def forward(self, x):
        x = self.act(self.stem(x))
        if x.shape[-1] == 32:
            x = self.block(x)
        return self.head(x.mean((2, 3)))


@pytest.mark.parametrize("share", [False, True])
def test_a_model_fx_cannot_trace_is_unshared_by_its_calls_and_quantized(share):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    model, example = SizeBranch(share_activation=share).eval(), torch.randn(1, 3, 32, 32)
    with pytest.raises(Exception):  # such a model: FX cannot trace it
        torch.fx.symbolic_trace(model)
    expected = model(example)
    unshared = unshare_modules(model, example)
    if share:  # without one module per call the quantizer fails: "more than one output node"
        assert isinstance(unshared.block.relu, CallSiteCopies) and len(unshared.block.relu.copies) == 2
    torch.testing.assert_close(unshared(example), expected)
    prepared = prepare_pt2e(export_dynamic(unshared, example).module(), x86_quantizer())
    prepared(torch.randn(4, 3, 32, 32))
    assert count_quantized(convert_pt2e(prepared)).quantized_layers == (4 if share else 3)


def test_without_call_site_copies_a_shared_module_fails_the_quantizer():
    """Guards the reason CallSiteCopies exists."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e

    model, example = SizeBranch(share_activation=True).eval(), torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="more than one output node"):
        prepare_pt2e(export_dynamic(model, example).module(), x86_quantizer())


def test_reused_stateless_modules_are_found_by_their_calls():
    model = torchvision.models.resnet18(weights=None, num_classes=10)  # in training mode, as QAT hands it over
    before = model.bn1.running_mean.clone()
    reused = reused_stateless_modules(model, torch.randn(1, 3, 32, 32))
    assert model.training and torch.equal(model.bn1.running_mean, before)  # counting changed nothing
    # each BasicBlock calls its one ReLU twice; the stem's relu and maxpool run once
    assert reused == {f"layer{i}.{j}.relu": 2 for i in range(1, 5) for j in range(2)}
    nested = torch.nn.Sequential(torch.nn.Conv2d(3, 3, 1), torch.nn.Sequential(torch.nn.ReLU()))

    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.act = nested, torch.nn.Sequential(torch.nn.ReLU())

        def forward(self, x):
            return self.act(self.body(self.act(self.act(x))))
    assert reused_stateless_modules(Twice(), torch.randn(1, 3, 4, 4)) == {"act": 3}  # not its child act.0
