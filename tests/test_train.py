from __future__ import annotations

import math

import pytest
import torch

from qexport.core.errors import QExportError
from qexport.core.preprocessing import Preprocessing
from qexport.training.data import Dataset, Split
from qexport.training.models import build_model, load_model
from qexport.commands.pipeline import checkpoint_is_current, train_checkpoint
from qexport.training.train import augment, evaluate, make_optimizer, padding_for, top1, train, weight_decay_groups
from qexport.training.recipe import ADAMW_WEIGHT_DECAY, TrainConfig


def hand_split(pixels: list[list[int]], labels: list[int]) -> Split:
    """One 1x1 image per row of ``pixels`` (its three channel values), with ``labels``."""
    images = torch.tensor(pixels, dtype=torch.uint8).view(len(pixels), 3, 1, 1)
    return Split(images, torch.tensor(labels, dtype=torch.long))


class SignOfTheFirstChannel(torch.nn.Module):
    """Class 0 where the normalised first channel is above 0, class 1 where it is below (logits x, -x)."""

    def forward(self, x):
        v = x[:, 0, 0, 0]
        return torch.stack([v, -v], dim=1)


def test_augment_keeps_shape_and_is_seeded():
    images = torch.arange(2 * 3 * 8 * 8, dtype=torch.int32).view(2, 3, 8, 8).to(torch.uint8)
    a = augment(images, 2, torch.Generator().manual_seed(0))
    b = augment(images, 2, torch.Generator().manual_seed(0))
    assert a.shape == images.shape and torch.equal(a, b)


def test_augment_crops_and_flips_per_sample():
    images = torch.randint(0, 255, (64, 3, 8, 8), dtype=torch.uint8)
    out = augment(images, 2, torch.Generator().manual_seed(1))
    unchanged = [(torch.equal(out[i], images[i])) for i in range(64)]
    assert 0 < sum(unchanged) < 64  # some samples untouched, most moved: per-sample, not batch-wide
    flipped_only = augment(images, 0, torch.Generator().manual_seed(2))
    for i in range(64):
        assert torch.equal(flipped_only[i], images[i]) or torch.equal(flipped_only[i], images[i].flip(-1))


def test_augment_output_is_one_of_the_crops_of_the_padded_image_or_its_mirror():
    """A 2x2 image padded by 1 has 3 x 3 crop offsets, each flipped or not: 18 candidates, listed
    here by slicing the zero-padded image by hand. A crop that swapped rows and columns, flipped
    vertically or padded with anything but zeros is none of them."""
    image = torch.arange(1, 13, dtype=torch.uint8).view(3, 2, 2)  # every pixel of every channel differs
    padded = torch.zeros(3, 4, 4, dtype=torch.uint8)
    padded[:, 1:3, 1:3] = image
    crops = [padded[:, y:y + 2, x:x + 2] for y in range(3) for x in range(3)]
    candidates = crops + [crop.flip(-1) for crop in crops]
    out = augment(image.unsqueeze(0).repeat(200, 1, 1, 1), 1, torch.Generator().manual_seed(0))
    found = {next(i for i, c in enumerate(candidates) if torch.equal(sample, c)) for sample in out}
    assert found == set(range(18))  # 200 draws reach all 18 (each missed with probability (17/18)^200 < 1e-4)


def test_padding_is_the_same_share_of_any_image_size():
    assert padding_for(4, 32) == 4
    assert padding_for(4, 224) == 28  # 4/32 of 224
    assert padding_for(2, 64) == 4
    assert padding_for(4, 8) == 1 and padding_for(1, 8) == 1  # never rounded down to no shift at all
    assert padding_for(0, 224) == 0  # no padding asked: none (padding_for(224, 0) would be 1)


def test_top1_is_the_share_of_rows_whose_largest_logit_is_the_label():
    logits = torch.tensor([[2.0, 1.0, 0.0],   # predicts 0, label 0: right
                           [0.0, 3.0, 1.0],   # predicts 1, label 1: right
                           [1.0, 0.0, 5.0],   # predicts 2, label 0: wrong
                           [4.0, 0.0, 0.0]])  # predicts 0, label 2: wrong
    labels = torch.tensor([0, 1, 0, 2])
    assert top1(logits, labels) == 0.5  # argmin would score 0.0
    assert top1(logits[:2], labels[:2]) == 1.0 and top1(logits[2:], labels[2:]) == 0.0
    assert math.isnan(top1(torch.empty(0, 3), torch.empty(0, dtype=torch.long)))


def test_evaluate_normalises_with_mean_then_std_and_scores_top1_by_hand():
    """First-channel pixels 0, 100, 200, 255 normalised with mean 0.5, std 0.25 are -2, -0.43,
    1.14, 2: classes 1, 1, 0, 0 against labels 1, 1, 0, 1 -- three of four right. Mean and std
    swapped, 100 reads as 0.28 (class 0: 2/4); without normalisation every class is 0 (1/4)."""
    split = hand_split([[0, 0, 0], [100, 0, 0], [200, 0, 0], [255, 0, 0]], [1, 1, 0, 1])
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    assert evaluate(SignOfTheFirstChannel(), split, mean, std) == 0.75
    assert evaluate(SignOfTheFirstChannel(), split, mean, std, batch_size=3) == 0.75  # two passes, same order
    assert evaluate(SignOfTheFirstChannel(), split, std, mean) == 0.5
    assert evaluate(SignOfTheFirstChannel(), split, (0.0,) * 3, (1.0,) * 3) == 0.25


def test_config_validates_itself():
    with pytest.raises(QExportError, match="--epochs"):
        TrainConfig(epochs=-1)
    with pytest.raises(QExportError, match="--lr"):
        TrainConfig(max_lr=0)
    with pytest.raises(QExportError, match="--optimizer must be one of sgd, adamw, got 'adam'"):
        TrainConfig(optimizer="adam")


class TinyTransformerParts(torch.nn.Module):
    """A weight matrix, a norm and a position embedding that the model exempts, as a timm ViT does."""

    def __init__(self):
        super().__init__()
        self.head = torch.nn.Linear(2, 2)
        self.norm = torch.nn.LayerNorm(2)
        self.pos_embed = torch.nn.Parameter(torch.ones(1, 3, 2))

    def no_weight_decay(self):
        return {"pos_embed"}


def test_adamw_decays_weight_matrices_only():
    model = TinyTransformerParts()
    decay, keep = weight_decay_groups(model, 0.05)
    assert decay == {"params": [model.head.weight], "weight_decay": 0.05}
    assert {id(p) for p in keep["params"]} == {id(model.head.bias), id(model.norm.weight), id(model.norm.bias),
                                               id(model.pos_embed)}
    assert keep["weight_decay"] == 0.0


def test_adamw_step_with_no_gradient_shrinks_only_the_decayed_weights_by_lr_times_decay():
    model = TinyTransformerParts()
    with torch.no_grad():
        model.head.weight.fill_(2.0)
        model.head.bias.fill_(2.0)
    optimizer = make_optimizer(model, TrainConfig(optimizer="adamw", max_lr=1.0))
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    # decoupled decay: w ← w − lr·wd·w = 2 × (1 − 0.05) = 1.9; the exempt ones keep their value
    assert torch.allclose(model.head.weight, torch.full((2, 2), 2 * (1 - ADAMW_WEIGHT_DECAY)))
    assert torch.equal(model.head.bias, torch.full((2,), 2.0))
    assert torch.equal(model.pos_embed, torch.ones(1, 3, 2))


def test_the_default_optimizer_is_nesterov_sgd_with_the_recipes_decay():
    optimizer = make_optimizer(TinyTransformerParts(), TrainConfig())
    assert isinstance(optimizer, torch.optim.SGD)
    group = optimizer.param_groups[0]
    assert (group["nesterov"], group["momentum"], group["weight_decay"]) == (True, 0.9, 5e-4)


def test_training_on_synthetic_learns(tiny_data):
    torch.manual_seed(0)
    model = build_model("resnet18", tiny_data.num_classes)
    before = evaluate(model, tiny_data.test, tiny_data.mean, tiny_data.std)
    metrics = train(model, tiny_data, TrainConfig(epochs=4, batch_size=32, max_lr=0.05), show_progress=False)
    assert metrics["test_top1"] > max(0.3, before + 0.1)


def test_checkpoint_metadata_and_reuse(tiny_data, tmp_path):
    config = TrainConfig(epochs=1, batch_size=64)
    path = train_checkpoint("resnet18", tiny_data, config, tmp_path / "ck.pt", show_progress=False)
    _, ckpt = load_model(path, "resnet18", 10)
    meta = ckpt["meta"]
    assert (meta["model"], meta["classes"], meta["epochs"], meta["seed"]) == ("resnet18", list(tiny_data.classes), 1, 0)
    assert meta["normalization"] == {"mean": list(tiny_data.mean), "std": list(tiny_data.std), "value_range": [0.0, 1.0]}
    assert meta["libraries"]["torch"] == torch.__version__.split("+")[0]
    model, _ = load_model(path, "resnet18", 10)
    assert meta["test_top1"] == meta["metrics"]["test_top1"] == evaluate(model, tiny_data.test, tiny_data.mean, tiny_data.std)
    assert meta["data"]["synthetic"] is True
    assert meta["data"]["fingerprint"] == tiny_data.fingerprint
    assert checkpoint_is_current(path, "resnet18", tiny_data, config)
    assert not checkpoint_is_current(path, "resnet18", tiny_data, TrainConfig(epochs=2, batch_size=64))
    assert not checkpoint_is_current(path, "resnet18", tiny_data, TrainConfig(epochs=1, batch_size=64, optimizer="adamw"))
    # a checkpoint from before the optimizer was recorded was trained with SGD, and is reused as such
    saved = torch.load(path, map_location="cpu", weights_only=True)
    del saved["meta"]["train_config"]["optimizer"]
    torch.save(saved, path)
    assert checkpoint_is_current(path, "resnet18", tiny_data, config)
    assert not checkpoint_is_current(path, "resnet18", tiny_data, TrainConfig(epochs=1, batch_size=64, optimizer="adamw"))


@pytest.mark.integration
def test_short_real_training_beats_chance(real_cifar):
    subset = real_cifar.limited(train=2000, test=500, seed=0)
    model = build_model("resnet18", 10)
    metrics = train(model, subset, TrainConfig(epochs=2, batch_size=64, max_lr=0.1), show_progress=False)
    # chance is 0.10 (σ ≈ 0.013 on 500 images): 0.16 is 4.5 σ above it; these 64 steps landed at 0.23
    # (2 epochs of batch 128 landed at 0.16 to 0.21: too few steps to be sure)
    assert metrics["test_top1"] > 0.16, metrics


def test_training_device_choice_is_checked():
    from qexport.training.train import resolve_device

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(QExportError, match="--device must be one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(QExportError, match="no CUDA GPU"):
            resolve_device("cuda")


def test_whole_run_estimate_after_the_first_epoch(capsys):
    from qexport.training.train import announce_estimate

    announce_estimate(300.0, 30, "cpu")
    said = capsys.readouterr().err
    assert "epoch 1/30 took 300 s on cpu" in said and "2.5 h" in said


def test_a_model_with_non_finite_logits_is_refused_not_scored_at_chance(tiny_data):
    """argmax of NaN is class 0: without the check a diverged model reads as 'chance accuracy'."""

    class Diverged(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 3), float("nan"))

    split = hand_split([[0, 0, 0]] * 4, [0, 0, 1, 2])
    # argmax of an all-NaN row is class 0: the two images labelled 0 score, as if at chance
    assert evaluate(Diverged(), split, (0.0,) * 3, (1.0,) * 3) == 0.5
    with pytest.raises(QExportError, match="non-finite logits.*no checkpoint was written"):
        evaluate(Diverged(), split, (0.0,) * 3, (1.0,) * 3, require_finite=True)


def test_batch_norm_statistics_are_recomputed_for_the_final_weights(tiny_data):
    """Running statistics that lag behind the weights (short schedules, torchvision's 0.01 momentum)
    are replaced by the statistics of the final model on train images; the momentum is restored."""
    from qexport.training.data import normalize
    from qexport.training.train import recalibrate_batch_norm

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, momentum=0.01)).eval()
    model[1].running_mean.fill_(50.0)  # stale: nothing like what the conv produces
    assert recalibrate_batch_norm(model, tiny_data, seed=0, images=len(tiny_data.train), batch_size=16) == 1
    with torch.no_grad():
        features = model[0](normalize(tiny_data.train.images, tiny_data.mean, tiny_data.std))
    expected = features.mean((0, 2, 3))
    assert torch.allclose(model[1].running_mean, expected, atol=1e-4)  # every train image, averaged over batches
    assert model[1].momentum == 0.01 and not model.training
    assert recalibrate_batch_norm(torch.nn.Linear(2, 2), tiny_data, seed=0) == 0


def hand_dataset(train: Split) -> Dataset:
    """``train`` (also the test split) read with mean 0.2 and std 0.4: pixel 0 -> -0.5, 51 -> 0,
    102 -> 0.5, 153 -> 1, 204 -> 1.5, 255 -> 2."""
    return Dataset(name="hand-made", classes=["a", "b"], train=train, test=train, source="hand-made",
                   preprocessing=Preprocessing(mean=[0.2] * 3, std=[0.4] * 3))


# Five 1x1 images; normalised, channel 0 is 0, 1, 2, -0.5, 0.5, channel 1 always 0, channel 2 always 2.
FIVE = hand_split([[51, 51, 255], [153, 51, 255], [255, 51, 255], [0, 51, 255], [102, 51, 255]], [0] * 5)


def test_batch_norm_recalibrated_in_one_batch_holds_the_mean_and_unbiased_variance_of_the_images():
    """Channel 0: mean (0 + 1 + 2 - 0.5 + 0.5) / 5 = 0.6; squared deviations 0.36 + 0.16 + 1.96
    + 1.21 + 0.01 = 3.7, over n - 1 = 4: 0.925. Channels 1 and 2 are constant: mean 0 and 2, var 0."""
    from qexport.training.train import recalibrate_batch_norm

    norm = torch.nn.BatchNorm2d(3, momentum=0.01).eval()
    assert recalibrate_batch_norm(norm, hand_dataset(FIVE), seed=0, batch_size=5) == 1
    assert torch.allclose(norm.running_mean, torch.tensor([0.6, 0.0, 2.0]), atol=1e-5)
    assert torch.allclose(norm.running_var, torch.tensor([0.925, 0.0, 0.0]), atol=1e-5)
    assert norm.momentum == 0.01 and not norm.training


def test_batch_norm_recalibration_weights_each_batch_by_its_images():
    """Batches of 3 and 2: channel 0 is (0, 1, 2) -- mean 1, variance 1 -- then (-0.5, 0.5) --
    mean 0, variance 0.5. Weighted 3:2, the running mean is 0.6 and the variance 0.8 (the
    momentum turned round, seen / (seen + batch), would leave 0 and 0.7)."""
    from qexport.training.train import recalibrate_batch_norm

    norm = torch.nn.BatchNorm2d(3, momentum=0.01).train()
    assert recalibrate_batch_norm(norm, hand_dataset(FIVE), seed=0, batch_size=3) == 1
    assert torch.allclose(norm.running_mean, torch.tensor([0.6, 0.0, 2.0]), atol=1e-5)
    assert torch.allclose(norm.running_var, torch.tensor([0.8, 0.0, 0.0]), atol=1e-5)
    assert norm.momentum == 0.01 and norm.training  # the mode it came in


def test_batch_norm_recalibration_leaves_out_a_last_batch_of_one_image():
    """Batches of 4 and 1: only (0, 1, 2, -0.5) counts -- mean 0.625, squared deviations 0.390625
    + 0.140625 + 1.890625 + 1.265625 = 3.6875, over 3: 1.229167 (one image has no variance: NaN)."""
    from qexport.training.train import recalibrate_batch_norm

    norm = torch.nn.BatchNorm2d(3)
    assert recalibrate_batch_norm(norm, hand_dataset(FIVE), seed=0, batch_size=4) == 1
    assert torch.allclose(norm.running_mean, torch.tensor([0.625, 0.0, 2.0]), atol=1e-5)
    assert torch.allclose(norm.running_var, torch.tensor([1.229167, 0.0, 0.0]), atol=1e-5)
    assert recalibrate_batch_norm(norm, hand_dataset(FIVE), seed=0, images=0) == 0


def test_training_never_sees_the_validation_images_and_the_build_uses_them(tiny_data, tmp_path):
    from qexport.exporter import BuildOptions
    from qexport.commands.pipeline import build_context

    path = train_checkpoint("resnet18", tiny_data, TrainConfig(epochs=1, batch_size=64), tmp_path / "ck.pt",
                            show_progress=False)
    model, ckpt = load_model(path, "resnet18", 10)
    meta = ckpt["meta"]
    data = build_context(None, tiny_data, path, BuildOptions(), show_progress=False).data
    assert len(data.validation) == 25 and len(data.train) == len(tiny_data.train) - 25
    assert meta["validation"]["count"] == 25
    assert meta["metrics"]["validation_top1"] == evaluate(model, data.validation, data.mean, data.std)
    assert "held out of the train split before training" in data.validation_source
    with pytest.raises(QExportError, match="--val-fraction"):
        TrainConfig(validation_fraction=1.0)


def test_the_estimate_is_shown_before_training_from_probe_steps(tiny_data, capsys):
    from qexport.training.train import announce_estimate, probe_epoch_seconds

    model = build_model("resnet18", 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert probe_epoch_seconds(model, tiny_data, TrainConfig(batch_size=32)) > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # a copy was probed
    announce_estimate(120.0, 30, "cpu", probed=True)
    said = capsys.readouterr().err
    assert "an epoch takes about 120 s (from 3 probe steps)" in said and "about 60 min in all" in said


def test_a_single_epoch_says_what_it_will_cost_before_it_starts(tiny_data, capsys):
    """One epoch is the progressive-resizing step that lasts an hour at 224 px on a CPU: its
    estimate comes from the probe steps before training, as for a longer run."""
    train(build_model("resnet18", 10), tiny_data, TrainConfig(epochs=1, batch_size=64), show_progress=False)
    said = capsys.readouterr().err
    assert said.index("an epoch takes about") < said.index("epoch 1/1 loss")
    assert "(from 3 probe steps)" in said and "epoch 1/1 took" not in said


def test_zero_epochs_scores_without_probing_or_estimating(tiny_data, capsys):
    """`--epochs 0` scores a checkpoint (e.g. at a new size) and trains nothing: no probe steps
    are spent and no "0 min in all" estimate is printed."""
    metrics = train(build_model("resnet18", 10), tiny_data, TrainConfig(epochs=0, batch_size=64), show_progress=False)
    assert "an epoch takes about" not in capsys.readouterr().err
    assert metrics["epochs"] == 0 and 0 <= metrics["test_top1"] <= 1


def test_build_refuses_a_checkpoint_it_will_not_reuse_unless_retrain(tiny_data, tmp_path, monkeypatch):
    from qexport.commands.pipeline import default_checkpoint_path, resolve_checkpoint

    monkeypatch.chdir(tmp_path)
    path = default_checkpoint_path("resnet18", tiny_data)
    train_checkpoint("resnet18", tiny_data, TrainConfig(epochs=1, batch_size=64), path, show_progress=False)
    stamp = path.stat().st_mtime_ns
    with pytest.raises(QExportError, match=r"is not reused: it was trained with epochs=1, the recipe asks epochs=2; "
                                           r"pass --checkpoint .* or --retrain"):
        resolve_checkpoint("resnet18", tiny_data, None, TrainConfig(epochs=2, batch_size=64), show_progress=False)
    assert path.stat().st_mtime_ns == stamp  # nothing trained, nothing replaced
    assert resolve_checkpoint("resnet18", tiny_data, None, TrainConfig(epochs=1, batch_size=64), show_progress=False) == path


def test_the_probe_scales_the_mean_timed_step_to_the_steps_of_an_epoch(tiny_data, monkeypatch):
    """A clock that reads 100 s before the 3 timed steps and 106 s after: 2 s a step. 256 train
    images in batches of 80 are 4 steps (the last one short), so an epoch takes 8 s (floor or
    round of 3.2 steps would say 6 s; counting the untimed first step, 1.5 s a step)."""
    from types import SimpleNamespace

    from torch import nn

    from qexport.training import train as training

    readings = iter([100.0, 106.0])
    monkeypatch.setattr(training, "time", SimpleNamespace(perf_counter=lambda: next(readings)))
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    assert training.probe_epoch_seconds(model, tiny_data, TrainConfig(batch_size=80)) == 8.0


def test_the_time_probe_leaves_weights_and_global_random_state_as_they_were(tiny_data):
    """Dropout draws from torch's global generator: a probe that moved it would make a run train other
    weights with the estimate than without it."""
    from torch import nn

    from qexport.training.train import probe_epoch_seconds

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 10))
    torch.manual_seed(7)
    weights = [p.detach().clone() for p in model.parameters()]
    state = torch.get_rng_state()
    probe_epoch_seconds(model, tiny_data, TrainConfig(epochs=2, batch_size=32))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(before, after) for before, after in zip(weights, model.parameters()))


def test_a_strided_one_by_one_convolution_over_few_channels_trains_in_the_contiguous_layout():
    from torch import nn

    from qexport.training.train import training_memory_format

    def stem(in_channels: int, kernel: int, stride: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(in_channels, 8, kernel, stride=stride), nn.Flatten())

    assert training_memory_format(stem(3, 1, 2)) == torch.contiguous_format  # FastViT / MobileOne stem
    assert training_memory_format(stem(6, 1, 2)) == torch.contiguous_format
    assert training_memory_format(stem(64, 1, 2)) == torch.channels_last  # ResNet's downsample
    assert training_memory_format(stem(3, 1, 1)) == torch.channels_last
    assert training_memory_format(stem(3, 3, 2)) == torch.channels_last
    assert training_memory_format(stem(1, 1, 2)) == torch.channels_last


def test_training_a_model_with_such_a_convolution_does_not_crash_on_one_thread():
    """On an AVX2 host torch 2.14's oneDNN corrupted the heap (segfault) within 20 steps of this model
    in channels_last on one thread; in a subprocess so that a regression fails this test, not the run."""
    import os
    import subprocess
    import sys

    script = ("import torch; from torch import nn; from qexport.training.sources import make_synthetic; "
              "from qexport.training.train import TrainConfig, train; torch.manual_seed(0); "
              "model = nn.Sequential(nn.Conv2d(3, 48, 1, stride=2, bias=False), nn.ReLU(), nn.AdaptiveAvgPool2d(1), "
              "nn.Flatten(), nn.Linear(48, 10)); "
              "train(model, make_synthetic(train=320, test=64, image_size=32, seed=0), "
              "TrainConfig(epochs=4, batch_size=16), show_progress=False); print('trained')")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0 and "trained" in done.stdout, done.stderr[-500:]


def test_a_warm_start_records_the_first_stages_contract_accuracy_and_time(tmp_path):
    """meta.init_from says how the whole model was made: the earlier stage's preprocessing, top-1
    and training time (its total, when it was itself a warm start), with the checksum given."""
    from qexport.commands.pipeline import init_record
    from qexport.core.documents import to_json
    from qexport.core.preprocessing import Preprocessing

    contract = Preprocessing(mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25], resize=64, resize_mode="exact")
    meta = {"preprocessing": to_json(contract), "test_top1": 0.52, "epochs": 3,
            "metrics": {"train_seconds": 100.0, "train_seconds_total": 250.0}}
    record = init_record(tmp_path / "small.pt", meta, "ab" * 32)
    assert record == {"path": str(tmp_path / "small.pt"), "sha256": "ab" * 32, "preprocessing": contract.describe(),
                      "test_top1": 0.52, "epochs": 3, "train_seconds_total": 250.0}
