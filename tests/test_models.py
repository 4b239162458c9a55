from __future__ import annotations

import torch
import pytest

from qexport.core.errors import QExportError
from qexport.training.models import build_model, classification_models, load_model, read_checkpoint, save_checkpoint


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


@pytest.mark.e2e
def test_any_classifier_builds_or_skips_with_a_reason(tmp_path):
    """A non-ResNet architecture (depthwise convolutions, squeeze-excitation, SiLU) on the user's
    own image folder, through the CLI: every family tried either builds or is skipped in one line
    (eager int8 needs a quantizable twin efficientnet_b0 lacks), and nothing fails."""
    import json

    from tests.conftest import run_cli
    from tests.test_bench import write_image_folder

    folder, out = tmp_path / "images", tmp_path / "artifacts"
    write_image_folder(folder, size=32, per_class=24)
    checkpoint = tmp_path / "effnet.pt"
    trained = run_cli("train", "--model", "efficientnet_b0", "--data", "imagefolder", "--data-dir", str(folder),
                      "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--lr", "0.05", "--out", str(checkpoint),
                      "--no-progress")
    assert trained.returncode == 0, trained.stderr
    built = run_cli("build", "--only", "torchscript-fp32,torchscript-int8-static,torchscript-int8-qat,onnx-int8",
                    "--checkpoint", str(checkpoint), "--data", "imagefolder", "--data-dir", str(folder),
                    "--image-size", "32", "--calibration-samples", "16", "--budget-samples", "16",
                    "--max-accuracy-drop", "100", "--budget-verdict", "estimate",  # 4 validation images resolve nothing
                    "--out", str(out), "--no-progress")
    assert built.returncode == 0, built.stdout + built.stderr
    said = " ".join((built.stdout + built.stderr).split())  # rich wraps lines at the terminal width
    assert "torchscript-int8-static skipped" in said and "quantizable twin" in said
    index = json.loads((out / "index.json").read_text())
    assert {a["family"] for a in index["artifacts"]} == {"torchscript-fp32", "onnx-int8"} and not index["failed"]


class DataDependentGate(torch.nn.Module):
    """Doubles its input only when the batch mean is positive: Python control flow on a value."""

    def forward(self, x):
        if x.mean() > 0:
            return x * 2
        return x


class Branchy(torch.nn.Module):
    """A classifier no exporter can capture whole: ``gate`` branches on the data."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.gate = DataDependentGate()
        self.fc = torch.nn.Linear(8, num_classes)

    def forward(self, x):
        return self.fc(self.gate(self.conv(x)).mean((2, 3)))


def test_a_model_no_exporter_can_capture_fails_per_family_in_one_sentence_naming_the_layer(tiny_data, tiny_checkpoint,
                                                                                           tmp_path):
    """Data-dependent control flow: torch.export-based families fail naming the layer and the line,
    TorchScript tracing (which would silently keep one branch) is refused the same way, and a
    family that does not run the model's Python (none here) would still build: each is its own outcome."""
    from dataclasses import replace

    from qexport.exporter import FAMILIES
    from qexport.exporter.build import build_families
    from tests.conftest import make_context

    ctx = replace(make_context(tiny_data, tiny_checkpoint), model=Branchy(tiny_data.num_classes))
    keys = ["torchscript-fp32", "onnx-fp32", "pt2e-fp32"]
    outcomes = build_families(ctx, [FAMILIES[k] for k in keys], tmp_path)
    for key, outcome in zip(keys, outcomes):
        assert outcome.status == "failed", key
        assert outcome.reason.startswith(f"{key} cannot capture the model"), outcome.reason
        assert "layer 'gate' (DataDependentGate) at test_models.py:" in outcome.reason, outcome.reason
        assert "\n" not in outcome.reason and "torch.where" in outcome.reason
    assert not [p for p in tmp_path.iterdir() if p.suffix in (".pt", ".onnx", ".pt2")]


class OverflowingCheck(torch.nn.Module):
    """A shape-style check traced to a bool, and an output that overflows to NaN on the trace
    check's scaled probes, as fp16 layers do at 100 times the example."""

    def forward(self, x):
        if (x * 0).sum() == 0:
            return x.exp() - x.exp()
        return -x


def test_a_probe_that_overflows_is_not_compared():
    """The branch check skips a probe whose eager output is not finite (nothing to compare) rather
    than failing the family with torch's "atol must be greater than or equal to zero"."""
    from qexport.exporter.capture import traced_or_refused

    traced = traced_or_refused("torchscript-fp16", OverflowingCheck(), torch.ones(1, 4))
    assert torch.equal(traced(torch.zeros(1, 4)), torch.zeros(1, 4))


class AlwaysTrueGate(torch.nn.Module):
    """Converts a tensor to a bool while tracing, as library shape checks do, but always takes the
    same branch: nothing is baked in that another input would change."""

    def forward(self, x):
        if (x * 0).sum() == 0:
            return x
        return -x


class Asserting(Branchy):
    def __init__(self, num_classes: int = 10):
        super().__init__(num_classes)
        self.gate = AlwaysTrueGate()


def test_a_tensor_to_bool_that_never_changes_the_branch_is_traced(tiny_data, tiny_checkpoint, tmp_path):
    from dataclasses import replace

    from qexport.exporter import FAMILIES
    from qexport.exporter.build import build_families
    from tests.conftest import make_context

    ctx = replace(make_context(tiny_data, tiny_checkpoint), model=Asserting(tiny_data.num_classes))
    [outcome] = build_families(ctx, [FAMILIES["torchscript-fp32"]], tmp_path)
    assert outcome.status == "built", outcome.reason


def test_an_error_a_library_raises_in_its_own_code_names_the_library_version_and_line():
    """torchao's x86 int8 pass fails on levit_128s with a bare TypeError; the user reads which library,
    which version and where, in one sentence. An error raised outside any library is left as it is."""
    import numpy as np

    from qexport.exporter.capture import explain_capture_failure

    try:
        np.linalg.inv(np.zeros((2, 2)))  # raised in numpy's own Python code
    except np.linalg.LinAlgError as err:
        explained = explain_capture_failure(err, "onnx-int8")
    message = str(explained)
    assert isinstance(explained, QExportError) and "\n" not in message
    assert message.startswith(f"onnx-int8 failed inside numpy {np.__version__} (_linalg.py:")
    assert "not in the model's code: LinAlgError: Singular matrix -- a limitation of that library" in message
    plain = RuntimeError("boom")
    try:
        raise plain
    except RuntimeError as err:
        assert explain_capture_failure(err, "onnx-int8") is plain


def _raised_in(filename: str) -> BaseException:
    """An error whose innermost traceback frame is code compiled as ``filename``."""
    namespace: dict = {}
    exec(compile("def fail():\n    raise ValueError('bad')\n", filename, "exec"), namespace)
    try:
        namespace["fail"]()
    except ValueError as err:
        return err
    raise AssertionError("fail() did not raise")


def test_a_library_is_found_in_debians_folder_and_qexport_itself_is_never_one():
    """Debian's Python installs libraries in dist-packages; qexport installed from a wheel sits in
    site-packages, and its own bugs must not read as another library's limitation."""
    from qexport.exporter.capture import library_site

    debian = "/usr/lib/python3/dist-packages/somelib/passes.py"
    assert library_site(_raised_in(debian)) == ("somelib", debian, 2)
    assert library_site(_raised_in("/venv/lib/python3.11/site-packages/qexport/exporter/onnx.py")) is None
    assert library_site(_raised_in("/venv/lib/python3.11/site-packages/toplevel.py")) is None  # no package to name
