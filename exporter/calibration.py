"""Post-training calibration: the seeded train-split images run through a prepared model.

Every PTQ family that observes activations in torch calibrates here -- an eager model with
observers (torchscript-int8-static) or a pt2e-prepared graph (pt2e-int8, executorch-int8) -- so
all of them see the same images (``ctx.calibration_batches``, ``--calibration-samples``) and
report the same count in the manifest's ``calibration`` record.
"""

from __future__ import annotations

import torch
from torch import nn

from qexport.core.progress import progress_bar
from qexport.exporter.registry import BuildContext


def calibrate(model: nn.Module, ctx: BuildContext, description: str = "calibrate") -> int:
    """Run every calibration batch through ``model`` (its observers record the ranges), with a
    progress bar named ``description``; returns the number of images seen."""
    seen = 0
    with progress_bar(ctx.show_progress) as bar, torch.no_grad():
        task = bar.add_task(description, total=ctx.shared.calibration_samples, status="")
        for batch in ctx.calibration_batches():
            model(batch)
            seen += batch.shape[0]
            bar.update(task, advance=batch.shape[0])
    return seen
