"""ExecuTorch runner: a ``.pte`` program in ExecuTorch's Python runtime, XNNPACK delegate, no torch model code.

Two things differ from every other runtime here:
- ExecuTorch's thread pool starts with one thread per core (upstream saw runs 300× slower on
  servers); it is set to the worker's thread count *before* the program loads.
- A ``.pte`` has a fixed input shape. The runner serves any batch by running the program once per
  slice of its own batch (the last slice padded), so accuracy, golden checks and LoadGen work; the
  bench times only the batch sizes the program has (the harness asks ``InputSpec.serves``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from qexport.core.manifest import LoadHints
from qexport.runtimes.base import Runner, load_failure_message
from qexport.core.errors import QExportError, last_line


@contextlib.contextmanager
def native_log_kept_aside() -> Iterator[Path]:
    """ExecuTorch's C++ logs CPU probing and the thread-pool reset to stderr on every load (five
    lines a process); they go to a scratch file instead, whose last line names a load failure."""
    with tempfile.TemporaryFile() as scratch:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(scratch.fileno(), 2)
        try:
            yield scratch
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def last_native_line(scratch) -> str:
    scratch.seek(0)
    return last_line(scratch.read().decode(errors="replace"), 160)


def set_threads(threads: int) -> None:
    """ExecuTorch's shared thread pool, resized before any program loads (pybindings only offer the
    'unsafe' reset: safe here, as nothing runs yet)."""
    from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool

    _unsafe_reset_threadpool(threads)


def slices(batch: np.ndarray, size: int) -> list[np.ndarray]:
    """``batch`` cut into slices of the program's batch ``size``; the last one padded with zeros."""
    pieces = []
    for start in range(0, len(batch), size):
        piece = batch[start:start + size]
        if len(piece) < size:
            piece = np.concatenate([piece, np.zeros((size - len(piece), *batch.shape[1:]), batch.dtype)])
        pieces.append(np.ascontiguousarray(piece))
    return pieces


class ExecuTorchRunner(Runner):
    runtime = "executorch"

    def __init__(self, method: Any, path: Path, threads: int, batch: int):
        self.method, self.path, self.threads, self.batch = method, path, threads, batch

    @classmethod
    def load(cls, path: Path, *, device: str = "cpu", threads: int | None = None,
             hints: LoadHints | None = None, settings: Mapping[str, str] | None = None) -> "ExecuTorchRunner":
        if device != "cpu":
            raise QExportError(f"{path.name} is an ExecuTorch program for CPUs (XNNPACK); bench it with --device cpu.")
        with native_log_kept_aside() as log:
            pool = int((settings or {}).get("threadpool_size", threads or 1))
            set_threads(pool)
            from executorch.runtime import Runtime

            try:
                method = Runtime.get().load_program(str(path)).load_method("forward")
            except Exception as err:  # a truncated or foreign file fails inside the C++ loader
                cause = RuntimeError(f"{err}: {last_native_line(log)}")
                raise QExportError(load_failure_message(path, "ExecuTorch", cause)) from err
        batch = int(method.metadata.input_tensor_meta(0).sizes()[0])
        return cls(method, path, pool, batch)

    def prepare(self, batch: np.ndarray) -> tuple[list[Any], int]:
        import torch

        return [torch.from_numpy(piece) for piece in slices(np.asarray(batch, np.float32), self.batch)], len(batch)

    def run_native(self, native: tuple[list[Any], int]) -> tuple[list[Any], int]:
        pieces, count = native
        return [self.method.execute([piece])[0] for piece in pieces], count

    def to_numpy(self, output: tuple[list[Any], int]) -> np.ndarray:
        pieces, count = output
        return np.concatenate([piece.numpy() for piece in pieces])[:count].astype(np.float32)

    def describe(self) -> dict:
        from qexport.core.envinfo import package_versions

        return {"name": "executorch", "version": package_versions(["executorch"])["executorch"],
                "device": "cpu", "threads": self.threads, "program_batch": self.batch, "delegate": "XNNPACK"}
