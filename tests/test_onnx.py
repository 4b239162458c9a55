"""ONNX families keep the batch dynamic through computed shapes, and a graph that runs at one
batch size only is one sentence naming its node and the model's layer, never a shipped file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from qexport.training.sources import make_synthetic
from qexport.core.errors import QExportError
from qexport.exporter import FAMILIES, BuildOptions
from qexport.exporter.registry import EVAL_BATCH, BuildContext
from qexport.runtimes.onnxrt import OnnxRuntimeRunner, RunFailure

IMAGE_SIZE = 16
ONNX_FAMILIES = ("onnx-fp32", "onnx-fp16", "onnx-int8")


class ChannelShuffle(nn.Module):
    """ShuffleNetV2's channel shuffle: a reshape whose target is computed from the input's shape."""

    def __init__(self, groups: int = 2):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.size()
        x = x.view(batch, self.groups, channels // self.groups, height, width)
        return torch.transpose(x, 1, 2).contiguous().view(batch, -1, height, width)


class ShuffleNetBlock(nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.shuffle = ChannelShuffle()
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(8, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.shuffle(self.stem(x)))


@pytest.fixture(scope="module")
def shuffle_context() -> BuildContext:
    data = make_synthetic(train=64, test=16, image_size=IMAGE_SIZE, classes=3, seed=0)
    model = ShuffleNetBlock(len(data.classes)).eval()
    options = BuildOptions(calibration_samples=32, max_accuracy_drop=100.0)
    return BuildContext("shufflenet-block", model, data, options, "0" * 64, show_progress=False)


@pytest.mark.parametrize("family", ONNX_FAMILIES)
def test_channel_shuffle_runs_at_batch_1_and_the_evaluation_batch(family, shuffle_context, tmp_path):
    path = tmp_path / f"block.{family}.onnx"
    FAMILIES[family].build_file(shuffle_context, path)

    runner = OnnxRuntimeRunner.load(path)
    for batch in (1, EVAL_BATCH):
        inputs = np.random.default_rng(batch).standard_normal((batch, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        assert runner.predict(inputs).shape == (batch, 3)


def with_batch_baked_in(path, batch: int = 1) -> None:
    """What a size specialised to the export example looks like: the shuffle's reshape target
    holds ``batch`` where the exporter wrote -1."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    shapes = {init.name: init for init in model.graph.initializer}
    reshape = next(n for n in model.graph.node if n.op_type == "Reshape" and len(shapes[n.input[1]].dims) == 1
                   and numpy_helper.to_array(shapes[n.input[1]]).size == 5)
    target = numpy_helper.to_array(shapes[reshape.input[1]]).copy()
    target[0] = batch
    shapes[reshape.input[1]].CopyFrom(numpy_helper.from_array(target, reshape.input[1]))
    onnx.save(model, str(path))


def test_a_graph_that_runs_at_one_batch_only_is_one_sentence_naming_node_and_layer(shuffle_context, tmp_path):
    from qexport.exporter.onnx import require_runs_at_check_batches
    from qexport.exporter.onnx_export import export_fp32

    path = tmp_path / "baked.onnx"
    export_fp32(shuffle_context, path)
    with_batch_baked_in(path)

    with pytest.raises(QExportError) as caught:
        require_runs_at_check_batches("onnx-fp32", path, shuffle_context)
    message = str(caught.value)
    assert f"onnx-fp32 does not run at batch {EVAL_BATCH} in ONNX Runtime: its Reshape node" in message
    assert "layer 'shuffle' (ChannelShuffle)" in message
    assert "x.view(batch, self.groups" in message  # the line of the model's own code
    assert "requested shape" in message and "leave onnx-fp32 out" in message
    assert "onnxruntime_src" not in message and ".h:" not in message and "\n" not in message
    assert not path.exists()  # never ships


def test_onnx_runtime_internals_are_left_out_of_the_failure():
    failure = RunFailure.of(RuntimeError(
        "[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Reshape node. Name:'node_view_8' "
        "Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/tensor/reshape_helper.h:91 "
        "onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, onnxruntime::TensorShapeVector&, "
        "bool) input_shape_size == requested_shape_size was false. The input tensor cannot be reshaped to the "
        "requested shape. Input shape:{250,96,3,3}, requested shape:{1,2,48,3,3}\n"))

    assert failure == RunFailure("Reshape", "node_view_8", "The input tensor cannot be reshaped to the requested "
                                 "shape. Input shape:{250,96,3,3}, requested shape:{1,2,48,3,3}")


def test_onnx_int8_for_the_default_target_keeps_its_weights_in_seven_bits(built_artifacts):
    """--target-cpu avx2 includes CPUs without VNNI, whose u8 x s8 multiply saturates at full range."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from tests.conftest import built_outcome

    out, outcomes = built_artifacts
    outcome = built_outcome(outcomes, "onnx-int8")
    graph = onnx.load(str(out / outcome.manifest.artifact.file)).graph
    weights = [numpy_helper.to_array(i) for i in graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) <= 64
    assert "7-bit" in outcome.manifest.config["weights"]


class SamePaddedPool(nn.Module):
    """timm's ``MaxPool2dSame`` in front of a small head: exported as Pad(-inf) then MaxPool, the
    stem of hybrid ViTs such as vit_tiny_r_s16_p8_224."""

    def __init__(self, classes: int):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                  nn.Linear(8, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.pad(self.stem(x), (0, 1, 0, 1), value=float("-inf"))
        return self.head(torch.nn.functional.max_pool2d(x, 3, stride=2))


def test_onnx_int8_keeps_a_padding_of_minus_infinity_in_float_and_still_answers_like_fp32(tmp_path):
    """Calibrated, the -inf padding gets an infinite scale and the int8 model answers garbage (the
    ViT fell to chance); kept in float with its max pool, the int8 model follows the fp32 one."""
    data = make_synthetic(train=64, test=16, image_size=IMAGE_SIZE, classes=3, seed=0)
    torch.manual_seed(0)
    context = BuildContext("same-padded-pool", SamePaddedPool(len(data.classes)).eval(), data,
                           BuildOptions(calibration_samples=32, max_accuracy_drop=100.0), "0" * 64, show_progress=False)
    fp32, int8 = tmp_path / "pool.fp32.onnx", tmp_path / "pool.int8.onnx"
    FAMILIES["onnx-fp32"].build_file(context, fp32)
    details = FAMILIES["onnx-int8"].build_file(context, int8)

    inputs = np.random.default_rng(0).standard_normal((8, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    expected = OnnxRuntimeRunner.load(fp32).predict(inputs)
    found = OnnxRuntimeRunner.load(int8).predict(inputs)
    assert np.isfinite(found).all()
    assert np.abs(found - expected).max() < 0.1 * np.abs(expected).max()
    kept = details.config["float_for_infinite_padding"]
    assert len(kept) == 2 and any("pad" in name.lower() for name in kept) and any("pool" in name.lower() for name in kept)
