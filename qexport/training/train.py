"""FP32 training and evaluation on in-memory uint8 data.

Augmentation (per-sample random crop with 4-pixel padding, horizontal flip) runs on whole
batches of tensors: on a 2-core machine a DataLoader's worker processes would steal the cores
the convolutions need. SGD with Nesterov momentum and a one-cycle schedule reaches the
README's accuracy in the fewest epochs we found.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Callable

import torch
from torch import nn

from qexport.core.preprocessing import batch_for
from qexport.training.data import Dataset, Split, normalize, seeded_subset
from qexport.core.errors import QExportError
from qexport.core.progress import progress_bar, say
from qexport.training.recipe import ADAMW_WEIGHT_DECAY, TrainConfig


def augment(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding) and horizontal flip, chosen independently per sample."""
    n, _, h, w = images.shape
    padded = nn.functional.pad(images, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (oy[:, None] + torch.arange(h))[:, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, :]
    flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None], cols.flip(-1), cols)
    batch_index = torch.arange(n)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch_index, rows, cols].permute(0, 3, 1, 2)


def padding_for(pad: int, size: int) -> int:
    """Random-crop padding for ``size`` px images: ``pad`` at 32 px and the same share of the image
    at any other size, so a 224 px image is shifted as far, relative to itself, as a 32 px one."""
    return max(1, round(pad * size / 32)) if pad else 0


def batches(split: Split, batch_size: int, generator: torch.Generator | None = None):
    """Yield (images, labels) mini-batches; shuffled when a generator is given."""
    n = len(split)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return split.batches(batch_size, order)


@torch.no_grad()
def predict(forward: Callable[[torch.Tensor], torch.Tensor], split: Split, mean, std,
            batch_size: int = 500) -> torch.Tensor:
    """Logits for a whole split, batch by batch (``forward`` takes normalised float NCHW);
    ``batch_size`` is the most per pass, fewer for large images (``batch_for``)."""
    batch_size = batch_for(split.images.size, batch_size)
    outputs = [forward(normalize(images, mean, std)) for images, _ in split.batches(batch_size, describe="scoring")]
    return torch.cat(outputs) if outputs else torch.empty(0)


def top1(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(dim=1) == labels).float().mean()) if len(labels) else float("nan")


def evaluate(model: nn.Module, split: Split, mean, std, batch_size: int = 500, device: str = "cpu",
             require_finite: bool = False) -> float:
    """Top-1 accuracy of an eager model on ``split`` (the test split, by convention).

    With ``require_finite``, inf/NaN logits are refused: argmax of NaN is class 0, so such a model
    would otherwise be reported at chance accuracy as if it were merely undertrained."""
    model.eval()
    model = model.to(memory_format=torch.channels_last)
    logits = predict(lambda x: model(x.to(device).contiguous(memory_format=torch.channels_last)).cpu(),
                     split, mean, std, batch_size)
    if require_finite and not bool(torch.isfinite(logits).all()):
        raise QExportError(
            "The trained model gives non-finite logits (inf/NaN) on the test split, so no checkpoint was written; "
            "train for more steps (--epochs, a smaller --batch-size: batch-norm statistics need a few dozen) or lower --lr.")
    return top1(logits, split.labels)


DEVICES = ("auto", "cpu", "cuda")


@torch.no_grad()
def recalibrate_batch_norm(model: nn.Module, data: Dataset, seed: int, device: str = "cpu",
                           images: int = 10_000, batch_size: int = 250) -> int:
    """Recompute every batch-norm layer's running statistics for the final weights ("precise BN").

    During training the running mean/var are an exponential average over weights that kept
    changing; with short schedules, high learning rates or a small momentum (torchvision's
    MobileNetV3 and EfficientNet use 0.01) they lag far behind, and the eval-mode model scores
    much lower than it should (mobilenet_v3_large after 3 CIFAR-10 epochs: 28 % test top-1 with
    the training averages, far above that after recalibration). A forward pass in train mode over
    ``images`` seeded train images (no augmentation, no gradients) replaces them: only the
    batch-norm layers in train mode (dropout and stochastic depth stay off), each batch weighted by
    its image count, a last batch of one image left out (its variance is undefined). Returns the
    number of layers recalibrated (0: the model has none, or ``images`` is 0)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or images < 1:
        return 0
    momenta, was_training = [m.momentum for m in norms], model.training
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.train()
    seen = 0
    try:
        for batch, _ in batches(seeded_subset(data.train, images, seed), batch_for(data.train.images.size, batch_size)):
            if len(batch) < 2:
                continue
            for m in norms:
                m.momentum = len(batch) / (seen + len(batch))  # running value = image-weighted mean of batches
            model(normalize(batch, data.mean, data.std).to(device).contiguous(memory_format=torch.channels_last))
            seen += len(batch)
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        model.train(was_training)
    return len(norms)


def training_memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last, oneDNN's faster training layout, unless the model has a 1x1 convolution with a
    stride above 1 over a channel count that is not a multiple of 16 (and not 1).

    torch 2.14's oneDNN corrupts the heap computing such a convolution's weight gradient in
    channels_last: measured on an AVX2 host, a 1x1 stride-2 convolution over 2, 3, 4 or 6 channels
    segfaults within 20 steps on one thread and spins forever on two, while 1, 8 and 16 channels,
    stride 1 and the contiguous layout are fine. timm's FastViT and MobileOne stems have one (3 -> 48
    channels on the RGB input), so `qexport train --model timm:fastvit_t8` hung. Multiples of 16 cover
    AVX-512's channel blocks too. Such a model trains in the contiguous layout instead."""
    for module in model.modules():
        if (isinstance(module, nn.modules.conv._ConvNd) and all(k == 1 for k in module.kernel_size)
                and any(s > 1 for s in module.stride) and module.in_channels > 1 and module.in_channels % 16):
            return torch.contiguous_format
    return torch.channels_last


def resolve_device(name: str) -> str:
    """'auto' → cuda when torch sees a GPU, else cpu; an unavailable choice is one sentence."""
    if name not in DEVICES:
        raise QExportError(f"--device must be one of {', '.join(DEVICES)}, got {name!r}.")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise QExportError("--device cuda: torch sees no CUDA GPU on this machine; use --device cpu (or auto).")
    return name


def format_duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.0f} min"


def probe_epoch_seconds(model: nn.Module, data: Dataset, config: TrainConfig, device: str = "cpu", steps: int = 3) -> float:
    """Seconds one epoch will take on this host, from a few training steps on a copy of the model:
    CPUs differ ~3x, so the estimate is measured, not assumed. The model's weights, the seeded
    batch order and torch's global random state (dropout draws from it) are left untouched, so a
    run trains the same weights whether or not it was probed."""
    cuda = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=cuda):
        return _timed_probe_steps(model, data, config, device, steps)


def _timed_probe_steps(model: nn.Module, data: Dataset, config: TrainConfig, device: str, steps: int) -> float:
    """One untimed step (allocation, kernel selection), then the mean of ``steps`` timed ones, scaled to an epoch."""
    layout = training_memory_format(model)
    probe = copy.deepcopy(model).to(device=device, memory_format=layout).train()
    optimizer = torch.optim.SGD(probe.parameters(), lr=1e-3, momentum=config.momentum)
    n = min(config.batch_size, len(data.train))
    images = normalize(augment(data.train.images[:n], padding_for(config.pad, data.train.images.size), torch.Generator().manual_seed(config.seed)),
                       data.mean, data.std).to(device).contiguous(memory_format=layout)
    labels = data.train.labels[:n].to(device)

    def step() -> None:
        loss = nn.functional.cross_entropy(probe(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # the first call pays one-time allocation and kernel selection
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps * math.ceil(len(data.train) / config.batch_size)


def announce_estimate(epoch_s: float, epochs: int, device: str, probed: bool = False) -> None:
    """Say what the whole run will cost on this host (CPUs differ ~3x): before training from a few
    probe steps (``probed``), and again after the first epoch from the epoch itself."""
    remaining = epoch_s * (epochs if probed else epochs - 1)
    finish = time.strftime("%H:%M", time.localtime(time.time() + remaining))
    took = f"an epoch takes about {epoch_s:.0f} s (from 3 probe steps)" if probed else f"epoch 1/{epochs} took {epoch_s:.0f} s"
    say(f"{took} on {device}: training will take about {format_duration(epoch_s * epochs)} in all (done around "
        f"{finish}); fewer --epochs or a GPU (--device cuda) shorten it")


def train(model: nn.Module, data: Dataset, config: TrainConfig, show_progress: bool = True,
          device: str = "cpu") -> dict:
    """Train in place on ``device``; return the metrics the checkpoint records (test accuracy, wall
    time...). The model is left on the CPU, where every exporter expects it."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)  # augmentation stays on the CPU: same images on any device
    layout = training_memory_format(model)
    model = model.to(device=device, memory_format=layout)
    steps_per_epoch = math.ceil(len(data.train) / config.batch_size)
    optimizer = make_optimizer(model, config)
    total_steps = config.epochs * steps_per_epoch
    # OneCycleLR divides by zero on schedules of a handful of steps; tiny runs just stop early in it.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.max_lr, total_steps=max(total_steps, 8),
                                                    pct_start=0.25, div_factor=10, final_div_factor=200)
    criterion = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    history: list[dict] = []
    # The estimate and the per-epoch lines are status lines, not progress bars: --no-progress keeps
    # them, so a logged run says what it will cost and how far it is instead of going silent for hours.
    # Before the hours start, not after the first epoch, and for one epoch too: a progressive-resizing
    # step (`--epochs 1` at 224 px) is the single epoch that lasts an hour on a CPU. `--epochs 0`
    # (score a checkpoint at another size) trains nothing, so it neither probes nor estimates.
    if config.epochs:
        announce_estimate(probe_epoch_seconds(model, data, config, device), config.epochs, device, probed=True)
    started = time.perf_counter()
    with progress_bar(show_progress) as bar:
        task = bar.add_task("train", total=total_steps, status="")
        for epoch in range(config.epochs):
            history.append(_train_epoch(model, data, config.batch_size, padding_for(config.pad, data.train.images.size), generator, optimizer, scheduler, criterion,
                                        lambda status: bar.update(task, advance=1, status=f"epoch {epoch + 1}/{config.epochs} {status}"),
                                        device, layout))
            if epoch == 0 and config.epochs > 1:
                announce_estimate(time.perf_counter() - started, config.epochs, device)
            if bar.disable:  # no terminal (CI, logs) or --no-progress: one line per epoch instead
                say(f"epoch {epoch + 1}/{config.epochs} loss {history[-1]['loss']:.3f} "
                    f"train top-1 {history[-1]['train_top1']:.1%} ({time.perf_counter() - started:.0f} s)")
    recalibrated = recalibrate_batch_norm(model, data, config.seed, device, images=config.bn_recalibration_images)
    train_seconds = time.perf_counter() - started
    accuracy = evaluate(model, data.test, data.mean, data.std, device=device, require_finite=True)
    validation = (evaluate(model, data.validation, data.mean, data.std, device=device)
                  if data.validation is not None and len(data.validation) else None)
    model.to("cpu").eval()
    return {
        "test_top1": accuracy,
        "test_samples": len(data.test),
        "validation_top1": validation,  # beside train_top1 and test_top1: how far the model fits its training images
        "train_seconds": round(train_seconds, 1),
        "epochs": config.epochs,
        "threads": torch.get_num_threads(),
        "batch_norm_recalibrated": {"layers": recalibrated,
                                    "images": min(config.bn_recalibration_images, len(data.train))},
        "device": device if device == "cpu" else f"{device} ({torch.cuda.get_device_name()})",
        "history": history,
    }


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The recipe's optimizer. SGD with Nesterov momentum suits convolutional networks; vision
    transformers are trained from scratch with AdamW (DeiT's and timm's recipes), so ``adamw`` gives
    them that. The one-cycle schedule drives either (with AdamW it cycles beta1 as SGD's momentum)."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(weight_decay_groups(model, ADAMW_WEIGHT_DECAY), lr=config.max_lr)
    return torch.optim.SGD(model.parameters(), lr=config.max_lr, momentum=config.momentum,
                           nesterov=True, weight_decay=config.weight_decay)


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two parameter groups, as timm makes them for AdamW: weight matrices decay; biases, norm scales
    and whatever the model names in ``no_weight_decay()`` (a ViT's position embedding and class
    token) do not, since shrinking them towards zero only hurts."""
    exempt = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, keep = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        (keep if parameter.ndim <= 1 or name in exempt else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def fine_tune(model: nn.Module, data: Dataset, *, epochs: int, lr: float, batch_size: int = 128,
              seed: int = 0, show_progress: bool = True, description: str = "fine-tune",
              on_epoch_end: Callable[[int], None] | None = None,
              layout: torch.memory_format | None = None) -> list[dict]:
    """Short low-LR training from a trained model (QAT families): cosine decay, same augmentation.
    ``layout``: the memory format to train in, decided from the eager model when ``model`` is an
    exported graph, which has no convolution modules for :func:`training_memory_format` to see."""
    layout = training_memory_format(model) if layout is None else layout
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * math.ceil(len(data.train) / batch_size)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(steps, 1))
    criterion = nn.CrossEntropyLoss()
    history: list[dict] = []
    with progress_bar(show_progress) as bar:
        task = bar.add_task(description, total=steps, status="")
        for epoch in range(epochs):
            history.append(_train_epoch(model, data, batch_size, padding_for(4, data.train.images.size), generator, optimizer, scheduler, criterion,
                                        lambda status: bar.update(task, advance=1, status=status),
                                        layout=layout))
            if on_epoch_end:
                on_epoch_end(epoch)
    return history


def _train_epoch(model, data, batch_size, pad, generator, optimizer, scheduler, criterion, tick,
                 device: str = "cpu", layout: torch.memory_format = torch.channels_last) -> dict:
    model.train()
    seen = correct = 0
    loss_sum = 0.0
    for images, labels in batches(data.train, batch_size, generator):
        x = normalize(augment(images, pad, generator), data.mean, data.std)
        x, labels = x.to(device).contiguous(memory_format=layout), labels.to(device)
        logits = model(x)
        loss = criterion(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        seen += len(labels)
        correct += int((logits.argmax(1) == labels).sum())
        loss_sum += float(loss.detach()) * len(labels)
        tick(f"loss {loss_sum / seen:.3f} acc {correct / seen:.1%}")
    return {"loss": round(loss_sum / max(seen, 1), 4), "train_top1": round(correct / max(seen, 1), 4)}
