"""The accuracy budget (--max-accuracy-drop): measured on held-out train images, per-layer
fallback until it holds, nothing written when it cannot, and each backend's way of keeping a
layer in float."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

from qexport.training.data import calibration_split
from qexport.core.errors import QExportError
from qexport.exporter import FAMILIES, BuildOptions
from qexport.core.options import BudgetConfig, QatInt8Config
from qexport.exporter.budget import budget_split, fallback_sizes
from qexport.exporter.sensitivity import fake_quantized, int8_shares, layer_costs, rank_layers
from qexport.exporter.build import build_families
from qexport.exporter.registry import BuildContext, BuildDetails, Family
from qexport.core.artifact_files import manifest_path, read_manifest
from tests.conftest import make_context

DAMAGED = 3  # layers the test family ruins unless the fallback keeps them in float
# The tiny checkpoint holds out 25 validation images: one changed image puts the interval at 11.8 pt,
# so a budget these images can resolve (a ruined layer costs far more).
RESOLVABLE = 12.0


def test_budget_split_is_disjoint_from_calibration(tiny_data):
    options = BuildOptions(calibration_samples=64, budget_samples=100)
    held_out, calibration = budget_split(tiny_data, options), calibration_split(tiny_data, 64, options.shared.seed)
    assert len(held_out) == 100
    as_rows = lambda split: {tuple(image.flatten()[:64].tolist()) for image in split.images}  # noqa: E731
    assert not as_rows(held_out) & as_rows(calibration)
    assert torch.equal(budget_split(tiny_data, options).labels, held_out.labels)  # seeded


def test_budget_split_is_empty_when_calibration_takes_every_image(tiny_data):
    assert len(budget_split(tiny_data, BuildOptions(calibration_samples=len(tiny_data.train)))) == 0


def test_fallback_sizes_double_and_never_keep_everything():
    assert fallback_sizes(1) == []
    assert fallback_sizes(5) == [1, 2, 4]
    assert fallback_sizes(8) == [1, 2, 4]


def test_budget_options_refuse_bad_values():
    for bad in (-0.1, float("nan"), 101):
        with pytest.raises(QExportError, match="--max-accuracy-drop"):
            BuildOptions(max_accuracy_drop=bad)
    with pytest.raises(QExportError, match="--budget-samples"):
        BuildOptions(budget_samples=0)


def test_layer_costs_and_int8_shares():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    costs = layer_costs(model, torch.zeros(2, 3, 8, 8))
    assert costs["0"].weights == 4 * 3 * 3 * 3 and costs["0"].macs == 4 * 8 * 8 * 27
    assert costs["2"].weights == costs["2"].macs == 256 * 10
    weights, macs = int8_shares(costs, ("2",))  # the linear layer kept in float: the convolution's share is int8
    assert (weights, macs) == (0.0405, 0.7297)  # 108 of 2668 weights, 6912 of 9472 MACs
    assert int8_shares(costs, ()) == (1.0, 1.0)


def test_fake_quantized_is_close_and_restores_the_layer():
    torch.manual_seed(0)
    layer, x = nn.Linear(16, 4), torch.rand(8, 16)
    original = layer.weight.detach().clone()
    with torch.no_grad(), fake_quantized({"fc": layer}, {"fc": (0.0, 1.0)}) as quantized:
        approximate = layer(x)
        quantized["fc"].switch(False)
        assert torch.equal(layer(x), nn.functional.linear(x, original, layer.bias))
    assert torch.equal(layer.weight, original) and not layer._forward_pre_hooks
    with torch.no_grad():
        assert 0 < (approximate - layer(x)).abs().max() < 0.05


def test_ranking_puts_the_layer_int8_hurts_most_first(tiny_data, tiny_checkpoint):
    ctx = make_context(tiny_data, tiny_checkpoint)
    with torch.no_grad():
        # fc's input channel 0 forced to 0 (its last batch norm drives it far below ReLU), then one
        # outlier weight per output channel there: int8 steps become coarse for all of fc's other
        # weights, while the fp32 function -- and so every other layer's error -- stays unchanged.
        last = ctx.model.layer4[-1].bn2
        last.weight[0], last.bias[0] = 0.0, -1e4
        ctx.model.fc.weight[:, 0] = 1000.0
    ranking = rank_layers(ctx, budget_split(ctx.data, ctx.options))
    assert ranking[0] == "fc"
    assert sorted(ranking) == sorted(n for n, m in ctx.model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)))


def _ruin_top_layers(ctx: BuildContext, config, path: Path) -> BuildDetails:
    """A stand-in for a quantizer that wrecks exactly the most sensitive layers (the ranking the
    build uses) unless asked to keep them in float: a real TorchScript file, run by its runtime."""
    from qexport.exporter.torchscript import embedded_meta, save_traced

    model = ctx.fresh_model()
    ruined = rank_layers(ctx, budget_split(ctx.data, ctx.options))[:DAMAGED]
    with torch.no_grad():
        for name in ruined:
            if name not in ctx.keep_float:
                weight = model.get_submodule(name).weight
                weight.copy_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)) * 10)
    save_traced(model, ctx.example, path, embedded_meta(ctx, "ruined"))
    return BuildDetails()


def _ruining_family(fallback: bool, fine_tuned: bool = False) -> Family:
    return Family(key="ruined-int8", variant="ruined", format="torchscript", extension=".pt", precision="int8",
                  runtime="torchscript", method="test stand-in", build=_ruin_top_layers, isolate=False,
                  fallback=fallback, config=QatInt8Config if fine_tuned else BudgetConfig)


def test_over_budget_family_is_rebuilt_with_sensitive_layers_in_float(tiny_data, tiny_checkpoint, tmp_path):
    ctx = make_context(tiny_data, tiny_checkpoint, max_accuracy_drop=RESOLVABLE)
    [outcome] = build_families(ctx, [_ruining_family(fallback=True)], tmp_path)
    assert outcome.status == "built", outcome.reason
    budget = read_manifest(manifest_path(tmp_path / outcome.file)).accuracy_budget
    assert [a.kept_float for a in budget.attempts] == [0, 1, 2, 4]  # 1, 2 still leave a ruined layer
    assert budget.attempts[0].drop_pt > RESOLVABLE and budget.met and budget.upper_pt <= RESOLVABLE
    assert budget.kept_float == rank_layers(ctx, budget_split(ctx.data, ctx.options))[:4]
    assert budget.samples == len(ctx.data.validation) == 25 and budget.unseen and "validation" in budget.measured_on
    assert 0 < budget.int8_weight_share < 1 and 0 < budget.int8_mac_share < 1 and budget.ranking


@pytest.mark.parametrize("fine_tuned", [False, True], ids=["ptq", "qat"])
def test_family_that_cannot_fall_back_is_not_written(tiny_data, tiny_checkpoint, tmp_path, fine_tuned):
    """Refused in one sentence whose remedy fits the family: a QAT family is told to fine-tune
    longer, not to use a QAT family."""
    ctx = make_context(tiny_data, tiny_checkpoint, max_accuracy_drop=RESOLVABLE)
    [outcome] = build_families(ctx, [_ruining_family(fallback=False, fine_tuned=fine_tuned)], tmp_path)
    assert outcome.status == "failed"
    assert f"over --max-accuracy-drop {RESOLVABLE:g}" in outcome.reason and "cannot keep single layers in float" in outcome.reason
    missed = outcome.over_budget  # the drop that refused it, typed, for the matrix to judge
    assert not missed.met and f"loses {missed.drop_pt:.2f} ± {missed.drop_ci95_pt:.2f}" in outcome.reason
    assert ("use a QAT family" in outcome.reason) != fine_tuned and ("--qat-epochs" in outcome.reason) == fine_tuned
    assert not list(tmp_path.glob("resnet18.ruined*"))


def test_budget_is_recorded_in_int8_manifests_only(tiny_data, tiny_checkpoint, tmp_path):
    ctx = make_context(tiny_data, tiny_checkpoint)
    outcomes = build_families(ctx, [FAMILIES["torchscript-int8-dynamic"], FAMILIES["torchscript-fp32"]], tmp_path)
    int8, fp32 = (o.manifest for o in outcomes)
    assert int8.accuracy_budget.max_drop_pt == 100.0 and int8.accuracy_budget.met
    assert int8.accuracy_budget.kept_float == [] and int8.accuracy_budget.int8_weight_share is None
    assert int8.build.options["config"]["max_accuracy_drop"] == 100.0  # changing the budget rebuilds int8 artifacts
    assert fp32.accuracy_budget is None and fp32.build.options["config"] == {}


def test_eager_int8_is_skipped_for_a_model_without_a_quantizable_twin(tiny_data, tiny_checkpoint, tmp_path):
    ctx = make_context(tiny_data, tiny_checkpoint)
    ctx.model_name = "efficientnet_b0"  # checked before anything is built: the resnet18 weights are never used
    outcomes = build_families(ctx, [FAMILIES["torchscript-int8-static"], FAMILIES["torchscript-int8-qat"]], tmp_path)
    assert [o.status for o in outcomes] == ["skipped", "skipped"]
    assert "quantizable twin" in outcomes[0].reason and "pt2e-int8" in outcomes[0].reason
    assert FAMILIES["torchscript-int8-static"].model_problem("mobilenet_v3_large") is None


# --- each backend keeps the named layers in float ------------------------------------------------

KEEP = ("conv1", "layer1.0.conv1", "fc")


def _keep_context(tiny_data, tiny_checkpoint) -> BuildContext:

    return replace(make_context(tiny_data, tiny_checkpoint), keep_float=KEEP)


def test_pt2e_keeps_named_layers_in_float(tiny_data, tiny_checkpoint):
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from qexport.exporter.graph_quant import count_quantized, exported_for_quantization
    from qexport.exporter.pt2e import x86_quantizer

    ctx = _keep_context(tiny_data, tiny_checkpoint)
    prepared = prepare_pt2e(exported_for_quantization(ctx), x86_quantizer(keep_float=ctx.keep_float))
    prepared(ctx.example.expand(2, -1, -1, -1))
    coverage = count_quantized(convert_pt2e(prepared))
    assert coverage.quantized_layers == coverage.layers - len(KEEP)


def test_pt2e_int8_prepacks_the_float_layers_and_says_so_only_when_it_keeps_some(tiny_data, tiny_checkpoint, monkeypatch,
                                                                                 tmp_path):
    """The layers kept in float are fp32 convolutions in a dynamic-batch package: without build-time
    pre-packing they re-lay out their weights on every call (ResNet18, 16 float layers: 10.8 ms
    at batch 1 against 1.9 ms). The compile itself is stood in for; what it was asked is recorded."""
    from qexport.exporter import pt2e

    asked = []
    monkeypatch.setattr(pt2e, "package", lambda model, ctx, config, path, variant, prepack_fp32=False:
                        asked.append(prepack_fp32) or {"conv_weight_prepack": pt2e.PREPACKED_AT_BUILD})
    kept = FAMILIES["pt2e-int8"].build_file(_keep_context(tiny_data, tiny_checkpoint), tmp_path / "kept.pt2")
    none_kept = FAMILIES["pt2e-int8"].build_file(make_context(tiny_data, tiny_checkpoint), tmp_path / "all.pt2")
    assert asked == [True, True]
    assert pt2e.PREPACK_NOTE in kept.notes and pt2e.PREPACK_NOTE not in none_kept.notes


def test_onnx_int8_excludes_the_nodes_of_named_layers(tiny_data, tiny_checkpoint, tmp_path):
    import onnx

    ctx = _keep_context(tiny_data, tiny_checkpoint)
    details = FAMILIES["onnx-int8"].build_file(ctx, tmp_path / "m.onnx")
    assert len(details.config["nodes_to_exclude"]) == len(KEEP) and not details.float_not_found
    float_weights = {i.name for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer if i.data_type == 1}
    assert {f"{layer}.weight" for layer in KEEP} <= float_weights


def test_openvino_int8_ignores_the_ops_of_named_layers(tiny_data, tiny_checkpoint, tmp_path):
    pytest.importorskip("nncf", reason="OpenVINO/NNCF not installed: pip install 'qexport[openvino]'")
    ctx = _keep_context(tiny_data, tiny_checkpoint)
    details = FAMILIES["openvino-int8"].build_file(ctx, tmp_path / "m.openvino.xml")
    assert len(details.config["ignored_scope"]) == len(KEEP) and not details.float_not_found
    assert details.int8_coverage.quantized_layers == details.int8_coverage.layers - len(KEEP)


def test_torchscript_static_int8_keeps_named_layers_in_float(tiny_data, tiny_checkpoint, tmp_path):
    ctx = _keep_context(tiny_data, tiny_checkpoint)
    kept = FAMILIES["torchscript-int8-static"].build_file(ctx, tmp_path / "kept.pt").int8_coverage
    full = FAMILIES["torchscript-int8-static"].build_file(make_context(tiny_data, tiny_checkpoint), tmp_path / "all.pt")
    assert kept.quantized_weights < full.int8_coverage.quantized_weights and kept.total_weights == full.int8_coverage.total_weights
    from qexport import runtimes

    runner = runtimes.load_runner("torchscript", tmp_path / "kept.pt")
    assert runner.predict(ctx.example.numpy()).shape == (1, tiny_data.num_classes)


def test_unknown_layer_names_are_noted_not_silently_ignored(tiny_data, tiny_checkpoint, tmp_path):

    ctx = replace(make_context(tiny_data, tiny_checkpoint), keep_float=("no.such.layer",))
    details = FAMILIES["onnx-int8"].build_file(ctx, tmp_path / "m.onnx")
    assert details.float_not_found == ["no.such.layer"]


def test_fallback_that_finds_none_of_its_layers_stops_in_one_sentence(tiny_data, tiny_checkpoint, tmp_path):
    """A graph that names none of the layers to keep in float would be rebuilt identically
    log2(layers) times and then blamed on 'even with k layers in float': it stops at the first."""
    rebuilds = []

    def ruin_and_find_nothing(ctx: BuildContext, config, path: Path) -> BuildDetails:
        rebuilds.append(ctx.keep_float)
        _ruin_top_layers(replace(ctx, keep_float=()), config, path)
        return BuildDetails(float_not_found=list(ctx.keep_float))

    family = replace(_ruining_family(fallback=True), build=ruin_and_find_nothing)
    [outcome] = build_families(make_context(tiny_data, tiny_checkpoint, max_accuracy_drop=RESOLVABLE), [family], tmp_path)
    assert outcome.status == "failed" and rebuilds == [(), rebuilds[1]] and len(rebuilds[1]) == 1
    assert "none of the 1 layers to keep in float" in outcome.reason and "\n" not in outcome.reason
    missed = outcome.over_budget  # the first attempt's drop, with no layer kept in float
    assert not missed.met and missed.kept_float == [] and missed.drop_pt == missed.attempts[0].drop_pt > RESOLVABLE
    assert not list(tmp_path.glob("resnet18.ruined*"))




def test_the_drop_carries_its_paired_95_percent_interval():
    """Hand-computed: of 10 images fp32 alone is right on 3, int8 alone on 1, both agree on 6:
    d = (1,1,1,-1,0,...), mean 0.2, squared deviations 3 x 0.64 + 1.44 + 6 x 0.04 = 3.6, sample
    variance 3.6 / 9 = 0.4, standard error sqrt(0.4 / 10) = 0.2: half-width 1.96 x 0.2 = 39.2 pt."""
    from qexport.exporter.budget import paired_drop_ci95_pt

    labels = torch.zeros(10, dtype=torch.long)
    right, wrong = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    fp32 = torch.stack([right] * 3 + [wrong] + [right] * 6)
    int8 = torch.stack([wrong] * 3 + [right] + [right] * 6)
    assert paired_drop_ci95_pt(fp32, int8, labels) == pytest.approx(39.2, abs=1e-3)
    assert paired_drop_ci95_pt(fp32, fp32, labels) == 0.0  # the same model: no spread at all
    assert paired_drop_ci95_pt(fp32[:1], int8[:1], labels[:1]) is None  # no spread from one image


def test_one_changed_image_puts_the_interval_at_296_over_n():
    """d is one 1 and n - 1 zeros: mean 1/n, sample variance (1 - 1/n) / (n - 1) = 1/n, standard
    error 1/n; so the drop is 100/n pt and its half-width 196/n. On 25 images: 4 + 7.84 = 11.84 pt."""
    from qexport.exporter.budget import one_change_upper_pt, paired_drop_ci95_pt, typical_ci95_pt

    fp32, int8, labels = _logits_changing(25, 1)
    assert paired_drop_ci95_pt(fp32, int8, labels) == pytest.approx(7.84, abs=1e-4)
    assert one_change_upper_pt(25) == pytest.approx(11.84) and one_change_upper_pt(296) == pytest.approx(1.0)
    # 5 % of 1000 images changing: 196 x sqrt(0.05 / 1000) = 1.3859 pt; of 25: 8.765 pt
    assert typical_ci95_pt(1000) == pytest.approx(1.3859, abs=1e-4)
    assert typical_ci95_pt(25) == pytest.approx(8.7654, abs=1e-4)


# --- the verdict: the interval's upper end, not the estimate ----------------------------------------

def _logits_changing(images: int, changed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """fp32 right on every image; the int8 stand-in wrong on the first ``changed``."""
    labels = torch.zeros(images, dtype=torch.long)
    fp32 = torch.tensor([[1.0, 0.0]]).repeat(images, 1)
    int8 = fp32.clone()
    int8[:changed] = torch.tensor([0.0, 1.0])
    return fp32, int8, labels


def test_a_drop_under_the_budget_whose_interval_is_not_is_met_on_the_estimate_only():
    """300 images, 2 changed: drop 0.667 pt, half-width 1.96 * sqrt(0.006644) / sqrt(300) = 0.922 pt,
    upper end 1.589: under a 1-pt budget on the estimate, over it on the interval."""
    from qexport.exporter.budget import Verdict, accepted, judge, paired_drop_ci95_pt

    fp32, int8, labels = _logits_changing(300, 2)
    ci = paired_drop_ci95_pt(fp32, int8, labels)
    assert ci == pytest.approx(0.9224, abs=1e-3)
    verdict = judge(200 / 300, ci, 1.0)
    assert verdict is Verdict.ESTIMATE_ONLY
    assert not accepted(verdict, "interval") and accepted(verdict, "estimate")
    assert judge(200 / 300, ci, 1.6) is Verdict.MET and accepted(Verdict.MET, "interval")
    assert judge(1.5, 0.2, 1.0) is Verdict.MISSED and not accepted(Verdict.MISSED, "estimate")
    assert judge(0.0, 0.0, 0.0) is Verdict.MET  # an artifact that changes no image meets even a 0-pt budget


def test_budget_images_too_few_to_resolve_the_budget_are_refused_before_building(tiny_data, tiny_checkpoint, tmp_path):
    from qexport.exporter.budget import resolution_problem

    problem = resolution_problem(25, 1.0, "interval")
    assert "25 images" in problem and "11.8 pt (±8.8 pt where 5% change)" in problem and "at least 296" in problem
    assert "\n" not in problem
    assert resolution_problem(296, 1.0, "interval") is None and resolution_problem(25, 1.0, "estimate") is None
    ctx = make_context(tiny_data, tiny_checkpoint, max_accuracy_drop=1.0)
    with pytest.raises(QExportError, match="too few for a 1-pt budget"):
        build_families(ctx, [FAMILIES["torchscript-int8-dynamic"]], tmp_path)
    assert not list(tmp_path.glob("resnet18.*"))


class _WrongOnOneImage(nn.Module):
    """The fp32 model, except on one input, where it answers ``wrong``."""

    def __init__(self, model: nn.Module, image: torch.Tensor, wrong: int, classes: int):
        super().__init__()
        self.model, self.image = model, image
        self.forced = nn.functional.one_hot(torch.tensor([wrong]), classes).float() * 100

    def forward(self, x):
        hit = (x - self.image).abs().flatten(1).amax(1) < 1e-4
        return torch.where(hit[:, None], self.forced, self.model(x))


def _one_image_changed(ctx: BuildContext, config, path: Path) -> BuildDetails:
    """A stand-in int8 artifact that changes exactly one budget image from right (under fp32) to
    wrong: a real TorchScript file, run by its runtime."""
    from qexport.exporter.torchscript import embedded_meta, save_traced
    from qexport.training.data import normalize

    split = budget_split(ctx.data, ctx.options)
    right = (ctx.fp32_logits(split).argmax(1) == split.labels).nonzero().flatten()
    first = int(right[0])
    image = normalize(split.images[first:first + 1], ctx.data.mean, ctx.data.std)
    wrong = (int(split.labels[first]) + 1) % ctx.data.num_classes
    save_traced(_WrongOnOneImage(ctx.fresh_model(), image, wrong, ctx.data.num_classes), ctx.example, path,
                embedded_meta(ctx, "one-changed"))
    return BuildDetails()


@pytest.mark.parametrize("rule, budget_pt, verdict", [("estimate", 5.0, "met on the estimate only"),
                                                      ("interval", 12.0, "met")])
def test_the_record_says_which_rule_met_it_and_on_what_images(tiny_data, tiny_checkpoint, tmp_path, rule, budget_pt,
                                                              verdict):
    """One of the 25 validation images changed: drop 4 pt, half-width 7.84, upper end 11.84 (see
    test_one_changed_image_puts_the_interval_at_296_over_n) -- over a 5-pt budget on the interval,
    under it on the estimate; under a 12-pt budget on both."""
    family = replace(_ruining_family(fallback=False), key="one-changed-int8", variant="one-changed",
                     build=_one_image_changed)
    ctx = make_context(tiny_data, tiny_checkpoint, max_accuracy_drop=budget_pt, budget_verdict=rule)
    [outcome] = build_families(ctx, [family], tmp_path)
    assert outcome.status == "built", outcome.reason
    budget = outcome.manifest.accuracy_budget
    assert (budget.rule, budget.verdict, budget.met, budget.unseen, budget.samples) == (rule, verdict, True, True, 25)
    assert (budget.drop_pt, budget.drop_ci95_pt) == (pytest.approx(4.0), pytest.approx(7.84, abs=1e-4))
    assert budget.upper_pt == pytest.approx(11.84, abs=1e-4) and budget.max_drop_pt == budget_pt
    assert outcome.manifest.build.options["config"]["budget_verdict"] == rule  # changing the rule rebuilds
    with pytest.raises(QExportError, match="--budget-verdict"):
        BuildOptions(budget_verdict="median")


def test_without_a_validation_split_the_budget_says_it_used_training_images(tiny_data, tiny_checkpoint, tmp_path, capsys):
    ctx = make_context(tiny_data, tiny_checkpoint)
    ctx.data = replace(ctx.data, validation=None, validation_source="")  # a checkpoint qexport did not train
    [outcome] = build_families(ctx, [FAMILIES["torchscript-int8-dynamic"]], tmp_path)
    budget = outcome.manifest.accuracy_budget
    assert not budget.unseen and "optimistic" in budget.measured_on
    assert "likely an optimistic drop" in capsys.readouterr().err  # the line says what the manifest records


def test_a_validation_split_an_earlier_stage_may_have_seen_is_not_called_unseen(tiny_data, tiny_checkpoint, tmp_path, capsys):
    """A checkpoint warm-started from one that held out other images: its validation images may have
    been trained on, so the manifest says unseen: false and the build says the drop is optimistic."""
    ctx = make_context(tiny_data, tiny_checkpoint)
    ctx.data = replace(ctx.data, validation_trained_on=True)
    [outcome] = build_families(ctx, [FAMILIES["torchscript-int8-dynamic"]], tmp_path)
    budget = outcome.manifest.accuracy_budget
    assert not budget.unseen and "optimistic" in budget.measured_on and "never trained on" not in budget.measured_on
    assert "likely an optimistic drop" in capsys.readouterr().err
