"""Measurement in the artifact's own runtime: the file loaded as a deployment team would load it
(no model code), scored on the test split against the eager fp32 model, and its golden I/O."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from qexport import runtimes
from qexport.training.data import Split, normalize, test_subset
from qexport.core.errors import QExportError
from qexport.exporter.registry import EVAL_BATCH, BuildContext, BuildDetails, Family
from qexport.core.fsutil import atomic_write_bytes
from qexport.core.manifest import Evaluation
from qexport.training.train import predict, top1

Runner = runtimes.Runner  # a loaded artifact; the build meets the runtimes only through this module


class Reference:
    """The eager fp32 model's logits on the evaluation split, computed once per build run."""

    def __init__(self, ctx: BuildContext):
        self.split = evaluation_split(ctx)
        self._ctx = ctx

    @cached_property
    def logits(self) -> torch.Tensor:
        return self._ctx.fp32_logits(self.split)


def evaluation_split(ctx: BuildContext) -> Split:
    """Always the **test** split (a seeded subset only when --eval-samples asks for one)."""
    return test_subset(ctx.data.test, ctx.shared.eval_samples, ctx.shared.seed)


@dataclass
class Measured:
    """What the build measured in the artifact's own runtime: its evaluation and its golden I/O."""

    evaluation: Evaluation
    golden_inputs: np.ndarray
    golden_outputs: np.ndarray
    raw_image: bytes = b""  # the file the first golden input was prepared from


def runner_logits(family: Family, path: Path, details: BuildDetails, split: Split, data,
                  runner: Runner | None = None) -> tuple[Runner, torch.Tensor]:
    """The file loaded in its deployment runtime (no model code), or ``runner`` that already
    holds it, and its logits on ``split``."""
    runner = runner or runtimes.load_runner(family.runtime, path, hints=details.load_hints)
    return runner, predict(lambda x: torch.from_numpy(runner.predict(x.numpy())), split, data.mean, data.std, EVAL_BATCH)


def evaluation(logits: torch.Tensor, reference: torch.Tensor, labels: torch.Tensor) -> Evaluation:
    """Top-1 of ``logits`` and of the eager fp32 ``reference`` on the same images, and how far apart they are."""
    return Evaluation(
        samples=len(labels), top1=top1(logits, labels), fp32_reference_top1=top1(reference, labels),
        top1_agreement_with_eager=float((logits.argmax(1) == reference.argmax(1)).float().mean()),
        max_abs_logit_diff=float((logits - reference).abs().max()))


def measure(family: Family, path: Path, ctx: BuildContext, reference: Reference, details: BuildDetails,
            runner: Runner | None = None) -> Measured:
    """Measure the file on the test split in its deployment runtime (``runner``: one that holds it already)."""
    runner, logits = runner_logits(family, path, details, reference.split, ctx.data, runner)
    if logits.shape != reference.logits.shape:
        raise QExportError(f"{family.key} produced logits of shape {tuple(logits.shape)}, expected "
                           f"{tuple(reference.logits.shape)}; the export is broken.")
    if not torch.isfinite(logits).all():
        raise QExportError(f"{family.key} produced non-finite logits (inf/NaN) on the test split; "
                           f"the model's activations overflow {family.precision} -- this artifact is unusable.")
    golden_inputs = normalize(ctx.data.test.images[:ctx.shared.golden_samples], ctx.data.mean, ctx.data.std).numpy()
    return Measured(evaluation(logits, reference.logits, reference.split.labels), golden_inputs,
                    runner.predict(golden_inputs), raw_golden_image(ctx, golden_inputs[0]))


def raw_golden_image(ctx: BuildContext, first_input: np.ndarray) -> bytes:
    """The first golden input's image file, checked to give that input through the PIL-and-numpy
    path a deployment team follows (``qexport.core.preprocessing.prepare_file``): qexport's own
    pipeline and the documented one must not drift apart."""
    from qexport.core.preprocessing import prepare_file

    raw = ctx.data.test.images.encoded(0)
    prepared = prepare_file(raw, ctx.data.contract)[0]
    if prepared.shape != first_input.shape or not np.allclose(prepared, first_input, atol=1e-5):
        raise QExportError("The documented preprocessing does not reproduce qexport's own input for the first test image "
                           f"(max |Δ| {float(np.abs(prepared - first_input).max()):.3g}); this is a qexport bug, please report it.")
    return raw


def write_golden(path: Path, inputs: np.ndarray, outputs: np.ndarray, raw_image: bytes = b"") -> None:
    """The golden npz: inputs and outputs, and the raw image file inputs[0] was prepared from."""
    import io

    buffer = io.BytesIO()
    arrays = {"inputs": inputs.astype(np.float32), "outputs": outputs.astype(np.float32)}
    if raw_image:
        arrays["raw_image"] = np.frombuffer(raw_image, dtype=np.uint8)
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())
