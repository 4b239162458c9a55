"""ExecuTorch: what the XNNPACK delegate holds (counted against hand-computed multiply-adds), the
fixed batch a .pte takes, and how the runner and the bench serve other batch sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qexport.core.build_records import Delegation
from qexport.core.manifest import InputSpec

pytest.importorskip("executorch", reason="executorch is not installed: pip install 'qexport[executorch]'")


class ConvThenCumsum(torch.nn.Module):
    """A 3→4 convolution (3×3, padding 1) on 8×8 images, a cumulative sum XNNPACK has no kernel
    for, then a 4→2 linear layer on the pooled features."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(torch.cumsum(self.conv(x), dim=3).mean((2, 3)))


def lowered(model: torch.nn.Module):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    exported = torch.export.export(model.eval(), (torch.randn(1, 3, 8, 8),))
    return to_edge_transform_and_lower(exported, partitioner=[XnnpackPartitioner()]).exported_program().graph_module


def test_the_delegation_counts_multiply_adds_by_hand_and_names_what_xnnpack_left():
    from qexport.exporter.executorch import delegation_of

    delegation = delegation_of(lowered(ConvThenCumsum()))
    conv = (1 * 4 * 8 * 8) * (3 * 3 * 3)  # output elements × (input channels × kernel): 6912
    linear = 2 * 4                        # outputs × inputs: 8
    assert delegation.delegated_macs + delegation.portable_macs == conv + linear
    assert delegation.delegated_macs == conv + linear  # both layers run in XNNPACK
    assert "cumsum" in delegation.portable_op_names and delegation.portable_ops >= 1


def test_a_fully_delegated_model_has_no_portable_operator():
    from qexport.exporter.executorch import delegation_of, delegation_notes

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 2))
    delegation = delegation_of(lowered(model))
    assert delegation.portable_ops == 0 and delegation.delegated_macs == 4 * 6 * 6 * 27 + 8
    assert delegation_notes(delegation)[0].startswith("every operator runs in XNNPACK")


def test_shares_are_the_delegate_over_the_whole():
    delegation = Delegation("XnnpackBackend", delegated_ops=3, portable_ops=1, delegated_macs=900, portable_macs=100)
    assert delegation.mac_share == pytest.approx(0.9) and delegation.op_share == pytest.approx(0.75)
    assert Delegation("XnnpackBackend", 0, 0, 0, 0).mac_share == 1.0  # nothing to hold: nothing left out


def test_a_fixed_shape_program_serves_only_its_own_batch():
    fixed = InputSpec(shape=[1, 3, 32, 32], mean=[0.0] * 3, std=[1.0] * 3, dynamic_axes=[])
    dynamic = InputSpec(shape=["batch", 3, 32, 32], mean=[0.0] * 3, std=[1.0] * 3)
    assert fixed.fixed_batch == 1 and [b for b in (1, 32, 128) if fixed.serves(b)] == [1]
    assert dynamic.fixed_batch is None and all(dynamic.serves(b) for b in (1, 32, 128))


def test_the_bench_times_the_batch_sizes_a_program_has_and_says_which_it_skipped():
    from types import SimpleNamespace

    from qexport.runtimes.harness import fixed_batch_note, served_batch_sizes
    from qexport.runtimes.bench_options import BenchOptions

    manifest = SimpleNamespace(input=InputSpec(shape=[4, 3, 32, 32], mean=[0.0] * 3, std=[1.0] * 3, dynamic_axes=[]))
    assert served_batch_sizes(manifest, BenchOptions(batch_sizes=(1, 4, 32))) == [4]
    assert served_batch_sizes(manifest, BenchOptions(batch_sizes=(1, 32))) == [4]  # none asked: its own
    assert fixed_batch_note(manifest, BenchOptions(batch_sizes=(1, 4, 32))).startswith("fixed batch 4: batch 1, 32 not timed")


def test_slices_pad_the_last_one_and_the_runner_trims_it_back():
    from qexport.runtimes.executorch import slices

    batch = np.arange(5 * 2, dtype=np.float32).reshape(5, 2)
    pieces = slices(batch, 2)
    assert [p.shape for p in pieces] == [(2, 2)] * 3
    np.testing.assert_array_equal(np.concatenate(pieces)[:5], batch)
    np.testing.assert_array_equal(pieces[-1][1], np.zeros(2, np.float32))


def test_a_batch_1_program_gives_each_image_its_own_logits(tmp_path):
    """Three images through a batch-1 .pte, one call each: the same logits as the eager model."""
    from qexport.exporter.executorch import lower_and_save
    from qexport.runtimes.executorch import ExecuTorchRunner

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 3)).eval()
    lower_and_save(torch.export.export(model, (torch.randn(1, 3, 8, 8),)), tmp_path / "m.pte")
    runner = ExecuTorchRunner.load(tmp_path / "m.pte", threads=1)
    images = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(runner.predict(images), expected, atol=1e-4)
    assert runner.describe()["program_batch"] == 1 and runner.describe()["threads"] == 1


def test_layers_the_budget_keeps_in_float_are_left_unquantized():
    """The budget's fallback: the named convolution stays fp32, the other is int8."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    from qexport.exporter.executorch import xnnpack_quantizer
    from qexport.exporter.graph_quant import count_quantized

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3)).eval()
    example = (torch.randn(1, 3, 8, 8),)
    for kept, quantized in (((), 2), (("0",), 1), (("0", "2"), 0)):
        prepared = prepare_pt2e(torch.export.export(model, example).module(), xnnpack_quantizer(kept))
        prepared(*example)
        assert count_quantized(convert_pt2e(prepared)).quantized_layers == quantized, kept
