"""A user's own model on a user's own image folder: the preprocessing it was trained with, end to end.

The folder holds real CIFAR-10 images enlarged to non-square JPEGs, so the shorter-side resize and
the centre crop both matter. The model is a bare torchvision ``state_dict``, as a user would bring.
Its accuracy is computed independently with torchvision's own ImageFolder and transforms and must
equal what qexport's fp32 artifacts report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import run_cli

CLASSES = ("airplane", "automobile", "bird")
FLAGS = ("--mean", "0.49,0.48,0.45", "--std", "0.25,0.24,0.26", "--resize", "56", "--crop", "48")


def write_folder(root: Path, real_cifar, per_class: dict[str, int], size=(80, 64), offset: int = 0) -> Path:
    """``root/<split>/<class>/*.jpg``: real CIFAR-10 test images of the first classes, enlarged to ``size``."""
    from PIL import Image

    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            chosen = torch.nonzero(real_cifar.test.labels == label).flatten()[offset:offset + count]
            for i in chosen.tolist():
                pixels = real_cifar.test.images[i].permute(1, 2, 0).numpy()
                Image.fromarray(pixels, "RGB").resize(size, Image.BICUBIC).save(folder / f"{i}.jpg", quality=92)
    return root


@pytest.fixture(scope="module")
def user_folder(real_cifar, tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("folder"), real_cifar, {"train": 40, "val": 30})


@pytest.fixture(scope="module")
def bare_state_dict(tmp_path_factory) -> Path:
    import torchvision

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "mine.pt"
    torch.save(torchvision.models.resnet18(num_classes=len(CLASSES)).state_dict(), path)
    return path


def torchvision_folder(folder: Path):
    """The folder as torchvision's own ImageFolder and transforms read it: no qexport code at all."""
    import torchvision
    from torchvision import transforms

    prepare = transforms.Compose([transforms.Resize(56), transforms.CenterCrop(48), transforms.ToTensor(),
                                  transforms.Normalize([0.49, 0.48, 0.45], [0.25, 0.24, 0.26])])
    return torchvision.datasets.ImageFolder(str(folder), transform=prepare)


def torchvision_top1(state_dict: Path, folder: Path) -> float:
    import torchvision

    model = torchvision.models.resnet18(num_classes=len(CLASSES))
    model.load_state_dict(torch.load(state_dict, weights_only=True))
    model.eval()
    data = torchvision_folder(folder)
    loader = torch.utils.data.DataLoader(data, batch_size=64)
    correct = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
    return correct / len(data)


@pytest.mark.integration
def test_a_bare_state_dict_without_preprocessing_is_refused_in_one_sentence(user_folder, bare_state_dict, tmp_path):
    done = run_cli("build", "--only", "onnx-fp32", "--model", "resnet18", "--checkpoint", str(bare_state_dict),
                   "--data", "imagefolder", "--data-dir", str(user_folder), "--out", str(tmp_path / "a"), "--no-progress")
    assert done.returncode == 2, done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("qexport: error:")]
    assert len(error) == 1 and "records no preprocessing" in error[0] and "--mean" in error[0]
    assert not (tmp_path / "a").exists() or not any((tmp_path / "a").glob("*.onnx"))


@pytest.mark.integration
def test_the_artifacts_score_what_torchvision_scores_under_the_same_preprocessing(user_folder, bare_state_dict,
                                                                                  tmp_path):
    out = tmp_path / "artifacts"
    done = run_cli("build", "--only", "onnx-fp32,torchscript-fp32", "--model", "resnet18", "--checkpoint",
                   str(bare_state_dict), "--data", "imagefolder", "--data-dir", str(user_folder), *FLAGS,
                   "--out", str(out), "--no-progress")
    assert done.returncode == 0, done.stderr
    assert "preprocessing: resize shorter side to 56 (bilinear), centre crop 48" in done.stderr
    expected = torchvision_top1(bare_state_dict, user_folder / "val")
    for name in ("resnet18.fp32.onnx", "resnet18.fp32.torchscript.pt"):
        manifest = json.loads((out / f"{name}.manifest.json").read_text())
        assert manifest["input"]["shape"] == ["batch", 3, 48, 48]
        recorded = manifest["input"]["preprocessing"]
        assert (recorded["resize"], recorded["resize_mode"], recorded["crop"]) == (56, "shorter", 48)
        assert manifest["evaluation"]["samples"] == 3 * 30
        assert manifest["evaluation"]["top1"] == pytest.approx(expected, abs=1e-6), name
        assert manifest["evaluation"]["top1"] == manifest["evaluation"]["fp32_reference_top1"]
    # The golden inputs are the first test images exactly as torchvision prepares them.
    reference = torchvision_folder(user_folder / "val")
    with np.load(out / "resnet18.fp32.onnx.golden.npz") as golden:
        for i, tensor in enumerate(golden["inputs"]):
            np.testing.assert_allclose(tensor, reference[i][0].numpy(), atol=1e-5)
    verified = run_cli("verify", str(out))
    assert verified.returncode == 0, verified.stdout
    assert "raw image" in verified.stdout
    # bench reads the folder again, under the manifest's contract, in its own workers
    benched = run_cli("bench", str(out), "--only", "onnx-fp32", "--rounds", "1", "--batch-sizes", "1",
                      "--min-seconds", "0.05", "--min-count", "3", "--warmup", "1")
    assert benched.returncode == 0, benched.stderr
    row = json.loads((out / "bench.json").read_text())["rows"][0]
    assert row["result"]["eval"]["top1"] == pytest.approx(expected, abs=1e-6)
    # The same folder again with another crop in one manifest: the raw image no longer gives the
    # golden input, and verify says so instead of passing on the golden tensors alone.
    path = out / "resnet18.fp32.onnx.manifest.json"
    manifest = json.loads(path.read_text())
    manifest["input"]["preprocessing"]["crop"] = 40
    path.write_text(json.dumps(manifest))
    broken = run_cli("verify", str(out / "resnet18.fp32.onnx"))
    assert broken.returncode == 1 and "raw image" in broken.stdout


@pytest.mark.integration
def test_a_qexport_checkpoint_refuses_flags_that_contradict_its_record_unless_forced(user_folder, tmp_path):
    from qexport.training.sources import load_dataset
    from qexport.commands.pipeline import train_checkpoint, training_data
    from qexport.core.preprocessing_flags import PreprocessingFlags
    from qexport.training.recipe import TrainConfig

    flags = PreprocessingFlags(mean=(0.5,) * 3, std=(0.25,) * 3, resize=56, crop=48)
    data = training_data("resnet18", load_dataset("imagefolder", user_folder), flags)
    checkpoint = train_checkpoint("resnet18", data, TrainConfig(epochs=1, batch_size=32), tmp_path / "ck.pt",
                                  show_progress=False)
    common = ("build", "--only", "onnx-fp32", "--checkpoint", str(checkpoint), "--data", "imagefolder",
              "--data-dir", str(user_folder), "--no-progress")
    refused = run_cli(*common, "--out", str(tmp_path / "a"), "--crop", "40")
    assert refused.returncode == 2
    assert "records its preprocessing as 'resize shorter side to 56 (bilinear), centre crop 48" in refused.stderr
    assert "centre crop 40" in refused.stderr and "--force-preprocessing" in refused.stderr
    forced = run_cli(*common, "--out", str(tmp_path / "b"), "--crop", "40", "--force-preprocessing")
    assert forced.returncode == 0, forced.stderr
    manifest = json.loads((tmp_path / "b" / "resnet18.fp32.onnx.manifest.json").read_text())
    assert manifest["input"]["preprocessing"]["crop"] == 40 and "centre crop 48" in manifest["input"]["preprocessing"]["overridden"]


PEAK_SCRIPT = """
import resource, sys
from pathlib import Path
import qexport.training.images
qexport.training.images.STREAM_MIN_IMAGES = 1  # both folders through the decoding workers, as any long pass
from qexport.training.data import channel_stats
from qexport.training.sources import load_dataset
data = load_dataset("imagefolder", Path(sys.argv[1]))
channel_stats(data.train.images)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


@pytest.mark.integration
def test_streaming_a_folder_keeps_peak_memory_flat_as_the_folder_grows(real_cifar, tmp_path):
    """1200 train images at 224 px are 180 MB of uint8 (and 1.4 GB as float64 statistics) when held
    whole; streamed, the pass over them costs what the pass over 100 does, within 60 MB."""
    small = write_folder(tmp_path / "small", real_cifar, {"train": 34, "val": 1}, size=(256, 256))
    large = write_folder(tmp_path / "large", real_cifar, {"train": 400, "val": 1}, size=(256, 256))

    def peak_mb(folder: Path) -> int:
        done = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(folder)], capture_output=True, text=True,
                              timeout=600, env={**os.environ})
        assert done.returncode == 0, done.stderr
        return int(done.stdout.strip().splitlines()[-1])

    small_mb, large_mb = peak_mb(small), peak_mb(large)
    assert large_mb - small_mb < 60, (small_mb, large_mb)
