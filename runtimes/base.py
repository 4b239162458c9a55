"""The interface every runtime runner implements.

The harness times :meth:`Runner.run_native` on inputs already converted by
:meth:`Runner.prepare`, so conversion between numpy and the runtime's tensor type is never
inside a timed region; :meth:`Runner.predict` is the convenient numpy-in/numpy-out path for
accuracy and golden checks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qexport.core.errors import first_line
from qexport.core.manifest import LoadHints

import numpy as np


class Runner(ABC):
    runtime: str = ""

    @classmethod
    @abstractmethod
    def load(cls, path: Path, *, device: str = "cpu", threads: int | None = None,
             hints: LoadHints | None = None, settings: Mapping[str, str] | None = None) -> "Runner":
        """Load an artifact from disk with no model code (``hints``: what its manifest says the
        loader must know, e.g. the int8 engine; ``settings``: the runtime's API settings to apply,
        by the names its declaration gives them, see :mod:`qexport.runtimes.settings`)."""

    @abstractmethod
    def prepare(self, batch: np.ndarray) -> Any:
        """Convert a float32 NCHW batch to the runtime's native input (outside timed regions)."""

    @abstractmethod
    def run_native(self, native: Any) -> Any:
        """One inference call, fully completed (synchronised on GPU) when it returns."""

    @abstractmethod
    def to_numpy(self, output: Any) -> np.ndarray:
        """Logits as float32 numpy."""

    @abstractmethod
    def describe(self) -> dict:
        """Runtime name, version, device and thread settings, for reports."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return self.to_numpy(self.run_native(self.prepare(batch)))


def load_failure_message(path: Path, runtime: str, err: BaseException) -> str:
    """The sentence for a file the runtime cannot open (corrupt, truncated, wrong format)."""
    detail = first_line(str(err), 160, default=type(err).__name__)
    return (f"{path} cannot be loaded by {runtime} ({detail}); the file is corrupt, truncated or not a "
            f"{runtime} artifact -- rebuild it with `qexport build --force`.")


class Stream:
    """A pipe seen only through read/write: numpy's .npy reader and writer otherwise treat a pipe
    as a real file and ask it for a position it does not have."""

    def __init__(self, raw):
        self._raw = raw

    def read(self, size: int = -1) -> bytes:
        return self._raw.read(size)

    def readline(self) -> bytes:
        return self._raw.readline()

    def write(self, data) -> int:
        return self._raw.write(data)

    def flush(self) -> None:
        self._raw.flush()
