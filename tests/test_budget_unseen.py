"""The accuracy budget measured on images the model never trained on predicts the test split;
measured on training images it may not. Real CIFAR-10, a small CNN trained until it fits its
training images, one real int8 artifact (ONNX Runtime, static QDQ) measured in its runtime.

Run with ``-s`` to print the three drops (docs/results/2026-12-02-budget-on-unseen-images.md records them)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest
import torch
from torch import nn

from qexport.training.data import Dataset, Holdout, hold_out
from qexport.exporter import FAMILIES, BuildOptions
from qexport.exporter.budget import HeldOut, paired_drop_ci95_pt
from qexport.exporter.measure import runner_logits
from qexport.exporter.registry import BuildContext, BuildDetails
from qexport.training.train import evaluate, top1, train
from qexport.training.recipe import TrainConfig

pytestmark = pytest.mark.integration

TRAIN, VALIDATION, TEST = 1800, 1000, 2000


def small_cnn(classes: int) -> nn.Module:
    """Four conv blocks, about 0.1 M weights: fits 800 CIFAR images in 30 epochs on a CPU core."""
    def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()] + \
            ([nn.MaxPool2d(2)] if pool else [])

    torch.manual_seed(0)
    return nn.Sequential(*block(3, 16, False), *block(16, 32, True), *block(32, 64, True), *block(64, 128, True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, classes))


@dataclass(frozen=True)
class Drop:
    images: int
    drop_pt: float
    ci95_pt: float

    def __str__(self) -> str:
        return f"{self.drop_pt:+.2f} ± {self.ci95_pt:.2f} pt on {self.images} images"


def drop_on(ctx: BuildContext, family_key: str, path, details: BuildDetails, split) -> Drop:
    fp32 = ctx.fp32_logits(split)
    int8 = runner_logits(FAMILIES[family_key], path, details, split, ctx.data)[1]
    return Drop(len(split), (top1(fp32, split.labels) - top1(int8, split.labels)) * 100,
                paired_drop_ci95_pt(fp32, int8, split.labels) or 0.0)


@pytest.fixture(scope="module")
def overfit(real_cifar):
    """A CNN trained on 800 train images (1000 more held out as validation) until it fits them."""
    data = real_cifar.limited(train=TRAIN, test=TEST, seed=0)
    fit: Dataset = hold_out(data, Holdout.choose(data.train, seed=0, fraction=VALIDATION / TRAIN))
    model = small_cnn(fit.num_classes)
    train(model, fit, TrainConfig(epochs=30, batch_size=64, max_lr=0.05, label_smoothing=0.0, pad=0,
                                  bn_recalibration_images=len(fit.train)), show_progress=False)
    return fit, model


def test_the_budget_on_unseen_images_agrees_with_the_test_split(overfit, tmp_path):
    data, model = overfit
    train_top1 = evaluate(model, data.train, data.mean, data.std)
    assert train_top1 > 0.95, f"the model must fit its training images (train top-1 {train_top1:.1%})"
    ctx = BuildContext("small_cnn", model, data, BuildOptions(calibration_samples=256, budget_samples=VALIDATION,
                                                              max_accuracy_drop=100.0), "0" * 64, show_progress=False)
    path = tmp_path / "small_cnn.int8.onnx"
    details = FAMILIES["onnx-int8"].build_file(ctx, path)
    on_validation = drop_on(ctx, "onnx-int8", path, details, HeldOut(ctx).split)
    trained_on = replace(data, validation=None)  # what a checkpoint without a validation split gets
    on_train = drop_on(ctx, "onnx-int8", path, details, HeldOut(replace(ctx, data=trained_on)).split)
    on_test = drop_on(ctx, "onnx-int8", path, details, data.test)
    print(f"\nsmall CNN, fp32 top-1 train {train_top1:.1%} / validation "
          f"{evaluate(model, data.validation, data.mean, data.std):.1%} / test {evaluate(model, data.test, data.mean, data.std):.1%}"
          f"\n  onnx-int8 drop: training images {on_train}\n                  validation {on_validation}"
          f"\n                  test split {on_test}")
    combined = (on_validation.ci95_pt ** 2 + on_test.ci95_pt ** 2) ** 0.5
    assert abs(on_validation.drop_pt - on_test.drop_pt) <= max(combined, 100 / on_test.images), \
        f"validation {on_validation} and test {on_test} disagree beyond their intervals"
