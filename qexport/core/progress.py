"""One progress-bar factory so every long step (training, calibration, compilation, bench)
looks the same and goes to stderr, leaving stdout for tables and JSON."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)

stderr_console = Console(stderr=True)


def progress_bar(enabled: bool = True) -> Progress:
    """A rich progress bar on stderr; disabled (silent) when not a terminal or when asked."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=stderr_console,
        disable=not enabled or not sys.stderr.isatty() and not _force_progress(),
        transient=False,
    )


def _force_progress() -> bool:
    import os

    return os.environ.get("QEXPORT_PROGRESS") == "1"


_label: ContextVar[str] = ContextVar("qexport_say_label", default="")


@contextmanager
def labelled(label: str) -> Iterator[None]:
    """Prefix this thread's status lines with ``label``: where several families build at once
    (``build --jobs``), an unlabelled "built in 7 s" would not say which."""
    token = _label.set(label)
    try:
        yield
    finally:
        _label.reset(token)


def current_label() -> str:
    return _label.get()


def say(message: str) -> None:
    """A status line on stderr (kept apart from the report on stdout)."""
    if label := _label.get():
        message = f"[dim]{label}:[/dim] {message.lstrip()}"
    stderr_console.print(message, highlight=False, soft_wrap=True)  # logs: one line, never wrapped at 80


def _not_an_isa_mismatch(record) -> bool:
    """A logging filter (a named function: ``addFilter`` keeps one copy however often it is added)."""
    return "AOTI_CPU_ISA" not in record.getMessage()


def _not_a_per_tensor_norm_weight(record) -> bool:
    """A logging filter, named for the same reason as :func:`_not_an_isa_mismatch`."""
    return "is out-of-range for weight" not in record.getMessage()


def quiet_library_warnings() -> None:
    """torch.jit / eager quantization deprecation notices say nothing a user can act on here
    (qexport already ships the torch.export path next to them); they would bury the report."""
    import logging
    import os
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=r".*(reduce_range|quantize_per_tensor|TypedStorage|To copy construct from a tensor).*")
    # torch.export names every tensor a model caches in a plain attribute (timm's attention-bias
    # caches): the export is right, and the model's author, not its user, could register buffers.
    warnings.filterwarnings("ignore", message=r"(?s).*were assigned during export.*")
    # The x86 quantizer leaves a max-pool in float when the layer before it is kept in float by the
    # accuracy budget (as it should), and says so with its whole configuration on every build.
    warnings.filterwarnings("ignore", message=r"(?s)The input of maxpool2d is not quantized.*")
    # Eager quantization's Quantize module reads its scale as a Python number while it is traced,
    # and torch.jit warns that it becomes a constant -- which is what a frozen int8 graph wants; with
    # layers kept in float there is one such warning per boundary and rebuild.
    warnings.filterwarnings("ignore", message=r"Converting a tensor to a Python (float|integer)",
                            module=r"torch\.ao\.nn\.quantized")
    # The same notices from torch's C++ side (c10 TORCH_WARN) and its "No CUDA runtime is found"
    # log line on CPU-only machines; read when torch is first imported, so set before that.
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    # A package built for a portable --target-cpu (avx2) and loaded on a richer CPU makes torch warn
    # that the CPU ISA differs and "could cause some issues". Loading on a lesser CPU, where it would,
    # qexport refuses first from the manifest's CPU requirement, in one sentence (hardware.py).
    logging.getLogger("torch.export.pt2_archive._package").addFilter(_not_an_isa_mismatch)
    # torchao registers an Enum as a pytree constant, which torch 2.14 logs as deprecated on every import.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    # ONNX Runtime's quantizer logs one line per 1-D norm weight (a transformer has dozens) on the
    # root logger when it asks for per-channel axis 1: those weights stay per-tensor, as they should.
    logging.getLogger().addFilter(_not_a_per_tensor_norm_weight)
