from __future__ import annotations

import pytest
import torch

from qexport.core.errors import QExportError
from qexport.training.models import build_model, load_model
from qexport.commands.pipeline import checkpoint_is_current, train_checkpoint
from qexport.training.train import augment, evaluate, train
from qexport.training.recipe import TrainConfig


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


def test_config_validates_itself():
    with pytest.raises(QExportError, match="--epochs"):
        TrainConfig(epochs=-1)
    with pytest.raises(QExportError, match="--lr"):
        TrainConfig(max_lr=0)


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
    for key in ("model", "classes", "normalization", "epochs", "seed", "test_top1", "data", "libraries"):
        assert key in meta, key
    assert meta["data"]["synthetic"] is True
    assert meta["data"]["fingerprint"] == tiny_data.fingerprint
    assert checkpoint_is_current(path, "resnet18", tiny_data, config)
    assert not checkpoint_is_current(path, "resnet18", tiny_data, TrainConfig(epochs=2, batch_size=64))


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
            return torch.full((x.shape[0], tiny_data.num_classes), float("nan"))

    assert evaluate(Diverged(), tiny_data.test, tiny_data.mean, tiny_data.std) >= 0  # plain scoring still scores
    with pytest.raises(QExportError, match="non-finite logits.*no checkpoint was written"):
        evaluate(Diverged(), tiny_data.test, tiny_data.mean, tiny_data.std, require_finite=True)


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


def test_training_never_sees_the_validation_images_and_the_build_uses_them(tiny_data, tmp_path):
    from qexport.exporter import BuildOptions
    from qexport.commands.pipeline import build_context

    path = train_checkpoint("resnet18", tiny_data, TrainConfig(epochs=1, batch_size=64), tmp_path / "ck.pt",
                            show_progress=False)
    meta = load_model(path, "resnet18", 10)[1]["meta"]
    assert meta["validation"]["count"] == 25 and meta["metrics"]["validation_top1"] is not None
    data = build_context(None, tiny_data, path, BuildOptions(), show_progress=False).data
    assert len(data.validation) == 25 and len(data.train) == len(tiny_data.train) - 25
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


def test_the_time_probe_leaves_weights_and_global_random_state_as_they_were(tiny_data):
    """Dropout draws from torch's global generator: a probe that moved it would make a run train other
    weights with the estimate than without it."""
    from torch import nn

    from qexport.training.train import probe_epoch_seconds

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.5), nn.Linear(4, 10))
    torch.manual_seed(7)
    weights = [p.detach().clone() for p in model.parameters()]
    state = torch.get_rng_state()
    seconds = probe_epoch_seconds(model, tiny_data, TrainConfig(epochs=2, batch_size=32))
    assert seconds > 0
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
