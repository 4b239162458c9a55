"""timm architectures as qexport models: names, sizes, checkpoints, and one built end to end."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from qexport.core.errors import QExportError
from qexport.training.models import build_model, check_model_name, file_stem, load_model, save_checkpoint

timm = pytest.importorskip("timm", reason="timm is not installed: pip install 'qexport[timm]'")


def test_an_unknown_timm_name_says_what_it_may_have_meant():
    with pytest.raises(QExportError, match=r"Unknown timm model 'resnet5' \(did you mean 'resnet50'\?\)"):
        check_model_name("timm:resnet5")


def test_without_timm_a_timm_name_is_one_sentence_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` meets where it is not installed
    with pytest.raises(QExportError, match=r"not installed; run `pip install 'qexport\[timm\]'`") as caught:
        build_model("timm:resnet50", 10)
    assert "\n" not in str(caught.value)


def test_a_fixed_size_architecture_is_built_for_the_data_size():
    """A ViT's patch grid and position embedding follow the data (32 px: 2×2 patches of 16), where
    timm's default (160 px for test_vit) would refuse a CIFAR image."""
    model = build_model("timm:test_vit", 10, 32).eval()
    assert model.pos_embed.shape[1] == 4 + model.num_prefix_tokens
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_a_size_the_architecture_cannot_take_is_one_sentence_naming_its_own_size():
    with pytest.raises(QExportError, match=r"timm:test_vit does not take 24×24 images \(.*patch size.*\); "
                                           r"pass --image-size with a size it accepts \(its own is 160\)\."):
        build_model("timm:test_vit", 10, 24)


def test_a_timm_checkpoint_round_trips_at_its_size(tmp_path):
    model = build_model("timm:test_vit", 10, 32)
    path = save_checkpoint(tmp_path / "vit.pt", model, "timm:test_vit", {})
    loaded, ckpt = load_model(path, None, 10, 32)
    assert ckpt["model"] == "timm:test_vit"
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_a_checkpoint_of_another_size_names_the_first_mismatched_key(tmp_path):
    """Weights trained at 160 px do not fit a 32 px grid: the position embedding says so."""
    torch.save(build_model("timm:test_vit", 10, 160).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(QExportError, match=r"does not fit timm:test_vit with 10 classes \(size mismatch for pos_embed"):
        load_model(tmp_path / "sd.pt", "timm:test_vit", 10, 32)


def test_a_timm_name_makes_file_names_without_a_colon():
    assert file_stem("timm:resnet50") == "timm-resnet50" and file_stem("resnet18") == "resnet18"


@pytest.mark.e2e
def test_a_timm_architecture_goes_through_the_zoo_end_to_end(tmp_path):
    """The CLI trains timm's test EfficientNet, builds its fp32 and int8 ONNX artifacts, measures
    them under the --resize it was given and writes the matrix; `verify` then accepts both in their runtime. (Every family's own
    contract runs on the test run's ResNet; the published matrix covers the rest.)"""
    from tests.conftest import run_cli

    out = tmp_path / "zoo"
    made = run_cli("zoo", "--models", "timm:test_efficientnet", "--only", "onnx-fp32,onnx-int8",
                   "--data", "synthetic", "--train-samples", "256", "--test-samples", "128", "--epochs", "1",
                   "--calibration-samples", "32", "--max-accuracy-drop", "100", "--rounds", "1",
                   "--min-seconds", "0.05", "--resize", "40x40", "--out", str(out), "--no-progress")
    assert made.returncode == 0, made.stdout + made.stderr
    matrix = json.loads((out / "compatibility.json").read_text())
    assert matrix["options"]["preprocessing"]["resize"] == 40 and "to 40×40" in matrix["models"][0]["preprocessing"]
    cells = {c["family"]: c for c in matrix["cells"]}
    assert {c["status"] for c in cells.values()} == {"built"}, cells
    assert cells["onnx-int8"]["int8_drop_pt"] is not None and cells["onnx-fp32"]["int8_drop_pt"] is None
    assert all(c["p50_ms"] > 0 and c["vs_best_fp32"] > 0 for c in cells.values())
    assert "| timm:test_efficientnet | 40 |" in (out / "compatibility.md").read_text()
    checked = run_cli("verify", str(out / "timm-test_efficientnet"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
