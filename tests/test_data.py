from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from qexport.training import data as qdata
from qexport.training import sources as qsources
from qexport.training.data import calibration_split, normalize, seeded_subset
from qexport.training.sources import load_dataset, make_synthetic
from qexport.core.errors import QExportError


def test_synthetic_is_flagged_and_learnable_shape(tiny_data):
    described = tiny_data.describe()
    assert described["synthetic"] is True and "SYNTHETIC" in described["note"]
    assert tiny_data.train.images.dtype == torch.uint8
    assert tiny_data.train.images.shape == (256, 3, 32, 32)
    assert tiny_data.num_classes == 10


def test_synthetic_sizes_on_the_command_line_generate_that_many_images(tiny_data):
    """``--data synthetic --train-samples 256 --test-samples 128`` is the very set tests build from
    in-process, so a command-line build finds the images its checkpoint was trained on."""
    from qexport.commands.pipeline import open_data

    named = open_data("synthetic", None, 32, 256, 128, seed=0)
    assert (len(named.train), len(named.test)) == (256, 128) and named.fingerprint == tiny_data.fingerprint
    assert torch.equal(named.train.images[:], tiny_data.train.images[:]) and "SYNTHETIC" in named.note


def test_seeded_subset_is_deterministic_and_seed_sensitive(tiny_data):
    a = seeded_subset(tiny_data.train, 50, seed=3)
    b = seeded_subset(tiny_data.train, 50, seed=3)
    c = seeded_subset(tiny_data.train, 50, seed=4)
    assert torch.equal(a.images[:], b.images[:]) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images[:], c.images[:])


def test_calibration_comes_from_train_split_only():
    data = make_synthetic(train=64, test=64, seed=1)
    calib = calibration_split(data, 32, seed=0)
    train_rows = {bytes(img.numpy().tobytes()) for img in data.train.images}
    test_rows = {bytes(img.numpy().tobytes()) for img in data.test.images}
    calib_rows = {bytes(img.numpy().tobytes()) for img in calib.images}
    assert calib_rows <= train_rows
    assert not calib_rows & test_rows


def test_normalize_uses_train_statistics(tiny_data):
    x = normalize(tiny_data.train.images, tiny_data.mean, tiny_data.std)
    assert x.dtype == torch.float32
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-3)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-2)


def test_limited_flags_subset_and_changes_fingerprint(tiny_data):
    small = tiny_data.limited(train=100, test=20)
    assert len(small.train) == 100 and len(small.test) == 20
    assert "subset" in small.note
    assert small.fingerprint != tiny_data.fingerprint


def test_unknown_source_is_one_sentence():
    with pytest.raises(QExportError, match="Unknown data source 'mnist'"):
        load_dataset("mnist", "/nonexistent")


def test_missing_cifar_offline_names_data_dir(tmp_path):
    with pytest.raises(QExportError, match="--data-dir"):
        qsources.load_cifar10(tmp_path / "nothing", download=False)


def test_failed_download_names_data_dir_and_leaves_nothing(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    target = tmp_path / "fresh"
    with pytest.raises(QExportError, match="could not be downloaded.*--data-dir"):
        qsources.load_cifar10(target, download=True)
    assert not target.exists()


def test_corrupt_npz_is_reported(tmp_path):
    (tmp_path / "cifar10.npz").write_bytes(b"not a zip at all")
    with pytest.raises(QExportError, match="not a readable CIFAR-10 npz"):
        qsources.load_cifar10(tmp_path, download=False)


def _write_images(folder: Path, count: int, colour: tuple[int, int, int]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (20, 24), colour).save(folder / f"{i}.png")


def test_imagefolder_reads_train_and_val(tmp_path):
    for split in ("train", "val"):
        _write_images(tmp_path / split / "cats", 3, (200, 10, 10))
        _write_images(tmp_path / split / "dogs", 2, (10, 10, 200))
    data = load_dataset("imagefolder", tmp_path, image_size=16)
    assert data.classes == ["cats", "dogs"]
    assert data.train.images.shape == (5, 3, 16, 16)
    assert data.test.labels.tolist() == [0, 0, 0, 1, 1]
    assert data.synthetic is False


def test_imagefolder_wrong_layout(tmp_path):
    _write_images(tmp_path / "cats", 2, (1, 2, 3))
    with pytest.raises(QExportError, match="train/<class>/ and val/<class>/"):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_empty_class(tmp_path):
    _write_images(tmp_path / "train" / "cats", 2, (1, 2, 3))
    (tmp_path / "train" / "dogs").mkdir()
    _write_images(tmp_path / "val" / "cats", 1, (1, 2, 3))
    with pytest.raises(QExportError, match="dogs has no images"):
        load_dataset("imagefolder", tmp_path)


def test_imagefolder_corrupt_image(tmp_path, monkeypatch):
    monkeypatch.setattr("qexport.training.images.STREAM_MIN_IMAGES", 1)  # decode in worker processes, as a long pass does
    _write_images(tmp_path / "train" / "cats", 1, (1, 2, 3))
    (tmp_path / "train" / "cats" / "bad.jpg").write_bytes(b"garbage")
    _write_images(tmp_path / "val" / "cats", 1, (1, 2, 3))
    data = load_dataset("imagefolder", tmp_path)  # only the file list is read here
    with pytest.raises(QExportError, match=r"Cannot read image .*bad\.jpg") as caught:
        qdata.channel_stats(data.train.images)  # streamed by worker processes: the sentence survives them
    assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value)


@pytest.mark.integration
def test_real_cifar10_matches_its_readme(real_cifar):
    assert len(real_cifar.train) == 50000 and len(real_cifar.test) == 10000
    assert real_cifar.classes[0] == "airplane" and real_cifar.classes[-1] == "truck"
    assert real_cifar.train.labels[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
    assert real_cifar.test.labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert np.allclose(np.array(real_cifar.mean) * 255, (125.3, 122.9, 113.9), atol=0.3)
    assert torch.bincount(real_cifar.test.labels).tolist() == [1000] * 10


def test_imagefolder_with_val_and_test_keeps_test_for_accuracy_and_val_for_the_budget(tmp_path):
    for split, count in (("train", 3), ("val", 2), ("test", 4)):
        _write_images(tmp_path / split / "cats", count, (200, 10, 10))
        _write_images(tmp_path / split / "dogs", 1, (10, 10, 200))
    data = load_dataset("imagefolder", tmp_path, image_size=16)
    assert len(data.train) == 4 and len(data.test) == 5 and len(data.validation) == 3
    assert "val" in data.validation_source and data.describe()["validation_samples"] == 3


def test_a_validation_folder_with_classes_the_model_lacks_is_one_sentence(tmp_path):
    _write_images(tmp_path / "val" / "cats", 1, (200, 10, 10))
    _write_images(tmp_path / "val" / "zebras", 1, (10, 10, 200))
    with pytest.raises(QExportError, match=r"classes the model was not trained on \(zebras\)") as caught:
        qsources.read_labelled_folder(tmp_path / "val", ["cats", "dogs"], qdata.default_geometry(16))
    assert "\n" not in str(caught.value)


def test_holdout_sets_validation_images_aside_and_refuses_other_data(tiny_data):
    holdout = qdata.Holdout.choose(tiny_data.train, seed=0)
    assert holdout.count == int(len(tiny_data.train) * 0.1) == 25
    data = qdata.hold_out(tiny_data, holdout)
    assert len(data.train) + len(data.validation) == len(tiny_data.train)
    rows = lambda split: {bytes(image.numpy().tobytes()) for image in split.images}  # noqa: E731
    assert not rows(data.train) & rows(data.validation)  # never trained on, never calibrated on
    assert rows(calibration_split(data, 64)) <= rows(data.train)
    assert data.fingerprint == tiny_data.fingerprint and data.mean == tiny_data.mean  # the data as loaded
    assert data.describe()["train_samples"] == len(tiny_data.train)
    other = make_synthetic(train=256, test=128, image_size=32, seed=5)
    with pytest.raises(QExportError, match="held out 25 validation images"):
        qdata.hold_out(other, holdout)
    assert qdata.Holdout.choose(make_synthetic(train=60_000, test=8, seed=0).train, seed=0).count == 5000  # capped


def test_a_holdout_stays_unseen_only_if_every_earlier_stage_held_out_the_same_images():
    """Progressive training: a stage started (--init-from) from one that trained on other images may
    have trained on this stage's validation images, and then the budget measured on them is optimistic."""
    same = qdata.Holdout(seed=0, count=25, fingerprint="a")
    assert not same.after(qdata.Holdout(seed=0, count=25, fingerprint="a")).trained_on_earlier
    assert same.after(qdata.Holdout(seed=1, count=25, fingerprint="b")).trained_on_earlier  # other images held out
    assert same.after(None).trained_on_earlier  # the earlier stage recorded no hold-out: it may have used them
    tainted = qdata.Holdout(seed=0, count=25, fingerprint="a", trained_on_earlier=True)
    assert same.after(tainted).trained_on_earlier  # a stage before the earlier one did: it stays said
    folder_val = qdata.Holdout(seed=0, count=0, fingerprint="")  # an image folder's own val/: no stage trains on it
    assert not folder_val.after(None).trained_on_earlier


def test_a_warm_started_checkpoint_without_the_record_counts_as_possibly_seen():
    from qexport.commands.pipeline import holdout_in
    from qexport.core.documents import to_json

    recorded = {"seed": 0, "count": 25, "fingerprint": "a"}  # as checkpoints recorded it before
    assert not holdout_in({"validation": recorded}, "old").trained_on_earlier  # one stage: unseen
    assert holdout_in({"validation": recorded, "init_from": {"path": "x.pt"}}, "old").trained_on_earlier
    told = to_json(qdata.Holdout(seed=0, count=25, fingerprint="a"))  # recorded now: said either way
    assert not holdout_in({"validation": told, "init_from": {"path": "x.pt"}}, "new").trained_on_earlier
    assert holdout_in({}, "bare") is None


def test_the_budget_on_images_an_earlier_stage_saw_is_called_optimistic(tiny_data):
    from qexport.exporter.budget import measured_on

    holdout = qdata.Holdout.choose(tiny_data.train, seed=0)
    unseen = qdata.hold_out(tiny_data, holdout)
    seen = qdata.hold_out(tiny_data, qdata.Holdout(holdout.seed, holdout.count, holdout.fingerprint, trained_on_earlier=True))
    assert "never trained on" in measured_on(unseen, False) and "optimistic" not in measured_on(unseen, False)
    assert "optimistic" in measured_on(seen, False) and "never trained on" not in measured_on(seen, False)
    assert "earlier training stage" in seen.validation_source and seen.validation_trained_on
    named = qdata.with_validation(seen, unseen.validation, "--val-dir val")  # the user's own images replace it
    assert not named.validation_trained_on and "never trained on" in measured_on(named, False)
