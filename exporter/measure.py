"""Measurement in the artifact's own runtime: the file loaded as a deployment team would load it
(no model code), scored on the test split against the eager fp32 model, and its golden I/O."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from qexport import runtimes
from qexport.data import Split, normalize, test_subset
from qexport.errors import QExportError
from qexport.exporter.registry import EVAL_BATCH, BuildContext, BuildDetails, Family
from qexport.fsutil import atomic_write_bytes
from qexport.manifest import Evaluation
from qexport.train import predict, top1

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
    return test_subset(ctx.data.test, ctx.options.eval_samples, ctx.options.seed)


@dataclass
class Measured:
    """What the build measured in the artifact's own runtime: its evaluation and its golden I/O."""

    evaluation: Evaluation
    golden_inputs: np.ndarray
    golden_outputs: np.ndarray


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
    golden_inputs = normalize(ctx.data.test.images[:ctx.options.golden_samples], ctx.data.mean, ctx.data.std).numpy()
    return Measured(evaluation(logits, reference.logits, reference.split.labels), golden_inputs,
                    runner.predict(golden_inputs))


def write_golden(path: Path, inputs: np.ndarray, outputs: np.ndarray) -> None:
    import io

    buffer = io.BytesIO()
    np.savez(buffer, inputs=inputs.astype(np.float32), outputs=outputs.astype(np.float32))
    atomic_write_bytes(path, buffer.getvalue())
