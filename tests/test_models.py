from __future__ import annotations

import torch
import pytest

from qexport.errors import QExportError
from qexport.models import build_model, classification_models, load_model, read_checkpoint, save_checkpoint


def test_registry_lists_classifiers_only():
    names = classification_models()
    assert {"resnet18", "resnet50", "mobilenet_v3_small"} <= set(names)
    assert "fasterrcnn_resnet50_fpn" not in names


def test_unknown_model_suggests_closest():
    with pytest.raises(QExportError, match=r"Unknown model 'resnet19' \(did you mean 'resnet18'\?\)"):
        build_model("resnet19", 10)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_build_model_sets_class_count(name):
    model = build_model(name, 7).eval()
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_checkpoint_round_trip(tmp_path):
    model = build_model("resnet18", 10)
    path = save_checkpoint(tmp_path / "m.pt", model, "resnet18", {"classes": [str(i) for i in range(10)], "seed": 1})
    loaded, ckpt = load_model(path, None, 10)
    assert ckpt["meta"]["seed"] == 1 and ckpt["model"] == "resnet18"
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key])
    assert not list(tmp_path.glob(".tmp-*")), "atomic write left its temporary file"


def test_bare_state_dict_is_accepted(tmp_path):
    model = build_model("resnet18", 3)
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    loaded, _ = load_model(tmp_path / "sd.pt", "resnet18", 3)
    assert loaded.fc.out_features == 3


def test_class_count_mismatch_is_one_sentence(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model("resnet18", 10), "resnet18", {})
    with pytest.raises(QExportError, match="does not fit resnet18 with 5 classes.*size mismatch"):
        load_model(path, "resnet18", 5)


def test_architecture_mismatch(tmp_path):
    torch.save(build_model("resnet18", 10).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(QExportError, match="does not fit mobilenet_v3_small"):
        load_model(tmp_path / "sd.pt", "mobilenet_v3_small", 10)


def test_named_checkpoint_for_other_model(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model("resnet18", 10), "resnet18", {})
    with pytest.raises(QExportError, match="is for 'resnet18', not 'resnet34'"):
        load_model(path, "resnet34", 10)


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pt").write_text("hello")
    with pytest.raises(QExportError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "x.pt")


def test_truncated_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", build_model("resnet18", 10), "resnet18", {})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(QExportError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(path)


def test_pickled_code_is_refused(tmp_path):
    """weights_only=True: a checkpoint that would run code on load is rejected, not executed."""
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(QExportError, match="not a readable PyTorch checkpoint"):
        read_checkpoint(tmp_path / "evil.pt")


def test_missing_checkpoint(tmp_path):
    with pytest.raises(QExportError, match="does not exist"):
        read_checkpoint(tmp_path / "nope.pt")
