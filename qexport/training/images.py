"""Images as a split holds them: raw pixels in memory or files on disk, prepared when read.

A real training or validation folder does not fit in memory once decoded (100 000 images at
224 px are 15 GB of uint8), and CIFAR-10 upsampled to 224 px would be 7.5 GB. So a split holds
only what it needs to find its images again -- an array of raw pixels, or the files' paths -- and
the :class:`~qexport.core.preprocessing.Preprocessing` geometry (resize, centre crop) that turns each
into the model's uint8 pixels. Reading a batch decodes just that batch; long passes
(:func:`stream`) decode in spawned worker processes a few batches ahead, so peak memory
does not grow with the folder's size.

Images already at the model's size (CIFAR-10 at 32 px) skip the geometry entirely and are
sliced from memory, as before.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from qexport.core.errors import QExportError
from qexport.core.preprocessing import Preprocessing, pixels
from qexport.core.progress import say

Index = int | slice | torch.Tensor | Sequence[int] | np.ndarray
STREAM_WORKERS = 2  # decoding processes per long pass; the CPU count caps it
STREAM_MIN_IMAGES = 1024  # a shorter pass decodes in-process: starting a worker costs an import of torch


class ArraySource:
    """Raw uint8 N×3×H×W pixels held in memory (CIFAR-10, synthetic data)."""

    def __init__(self, pixels_nchw: torch.Tensor):
        self.pixels = pixels_nchw

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def native_size(self) -> tuple[int, int]:
        return int(self.pixels.shape[2]), int(self.pixels.shape[3])

    def select(self, indices: torch.Tensor) -> "ArraySource":
        return ArraySource(self.pixels[indices])

    def image(self, i: int):
        """Image ``i`` as a PIL image."""
        from PIL import Image

        return Image.fromarray(self.pixels[i].permute(1, 2, 0).contiguous().numpy(), "RGB")

    def encoded(self, i: int) -> bytes:
        """Image ``i`` as the bytes of a PNG file (lossless: the raw pixels exactly)."""
        import io

        buffer = io.BytesIO()
        self.image(i).save(buffer, format="PNG")
        return buffer.getvalue()

    def digest(self, digest) -> None:
        digest.update(self.pixels.contiguous().numpy().tobytes())


class FileSource:
    """Image files, decoded only when read."""

    def __init__(self, files: Sequence[Path]):
        self.files = tuple(files)

    def __len__(self) -> int:
        return len(self.files)

    @property
    def native_size(self) -> None:
        return None  # files may differ in size: only a geometry makes them one size

    def select(self, indices: torch.Tensor) -> "FileSource":
        return FileSource([self.files[int(i)] for i in indices])

    def image(self, i: int):
        from PIL import Image, UnidentifiedImageError

        file = self.files[i]
        try:
            with Image.open(file) as image:
                image.load()  # a truncated file fails here, naming itself, not later in a batch
                return image.convert("RGB")
        except Image.DecompressionBombError as err:  # PIL's guard against a file that decodes to gigabytes
            raise QExportError(f"Image {file} is too large to decode safely ({err}); downscale or remove it.") from err
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise QExportError(f"Cannot read image {file} ({str(err) or type(err).__name__}); remove or replace it.") from err

    def encoded(self, i: int) -> bytes:
        return Path(self.files[i]).read_bytes()

    def digest(self, digest) -> None:
        """The files' bytes (not their decoded pixels: fast, and the same files give the same digest)."""
        for file in self.files:
            digest.update(Path(file).name.encode() + b"\0")
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)


Source = ArraySource | FileSource


class Images:
    """N images of one split, read as uint8 N×3×S×S pixels after the geometry of ``preparation``.

    Behaves like the uint8 tensor the splits used to hold where consumers need it (``shape``,
    ``len``, indexing by an int, a slice or an index tensor, iteration), but decodes on demand."""

    def __init__(self, source: Source, preparation: Preprocessing | None = None):
        if preparation is None and source.native_size is None:
            raise QExportError("Image files of unknown size need a resize or crop to become one input size.")
        if preparation is not None and preparation.output_size is None:
            preparation = preparation.at_size(source.native_size[0]) if source.native_size else preparation
        self.source = source
        self.preparation = preparation

    @classmethod
    def of(cls, images: "Images | torch.Tensor") -> "Images":
        return images if isinstance(images, Images) else cls(ArraySource(images))

    def __len__(self) -> int:
        return len(self.source)

    @property
    def size(self) -> int:
        """The side of the square pixels this yields."""
        if self.preparation is not None and self.preparation.output_size is not None:
            return self.preparation.output_size
        return self.source.native_size[0]

    dtype = torch.uint8

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self), 3, self.size, self.size)

    @property
    def as_is(self) -> bool:
        """Whether the raw pixels already are the output (no decode, resize or crop)."""
        native = self.source.native_size
        if native is None:
            return False
        p = self.preparation
        return p is None or (native == (self.size, self.size) and p.resize in (None, native[0]) and p.crop in (None, native[0]))

    def prepared(self, preparation: Preprocessing) -> "Images":
        """These images under another geometry (cheap: nothing is decoded)."""
        return Images(self.source, preparation)

    def select(self, indices: torch.Tensor) -> "Images":
        return Images(self.source.select(indices), self.preparation)

    def pixels_of(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 3×S×S pixels."""
        if self.as_is:
            return self.source.pixels[i]
        return torch.from_numpy(np.ascontiguousarray(pixels(self.source.image(i), self.preparation)))

    def __getitem__(self, key: Index) -> torch.Tensor:
        if isinstance(key, int):
            return self.pixels_of(key)
        indices = _indices(key, len(self))
        if self.as_is:
            return self.source.pixels[indices]
        if len(indices) == 0:
            return torch.empty((0, 3, self.size, self.size), dtype=torch.uint8)
        return torch.stack([self.pixels_of(int(i)) for i in indices])

    def __iter__(self) -> Iterator[torch.Tensor]:
        for i in range(len(self)):
            yield self.pixels_of(i)

    def encoded(self, i: int) -> bytes:
        """Image ``i`` as a file's bytes, before any preprocessing (golden data's raw image)."""
        return self.source.encoded(i)

    def digest(self, digest) -> None:
        self.source.digest(digest)


def _indices(key: Index, length: int) -> torch.Tensor:
    if isinstance(key, slice):
        return torch.arange(length)[key]
    return torch.as_tensor(key, dtype=torch.int64).reshape(-1)


def stream_workers(images: int) -> int:
    """Decoding processes for a pass over ``images``: none for a short pass or inside a daemonic
    process (a build family's child, which may not have children), else up to
    :data:`STREAM_WORKERS`, within the usable CPUs."""
    if images < STREAM_MIN_IMAGES or multiprocessing.current_process().daemon:
        return 0
    return max(0, min(STREAM_WORKERS, len(os.sched_getaffinity(0))))


def stream(images: Images, labels: torch.Tensor, order: torch.Tensor, batch_size: int,
           describe: str | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(pixels, labels) batches in ``order``: sliced from memory when the images are as they are
    held, else decoded -- by worker processes a few batches ahead for a long pass -- so memory
    holds a few batches, never the split. ``describe``: what the pass is for; a long decoded pass
    then says how far it is every :data:`REPORT_EVERY_S` seconds (a 50 000-image folder at 224 px
    is minutes of decoding, which would otherwise pass in silence)."""
    chunks = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    if images.as_is:
        for idx in chunks:
            yield images.source.pixels[idx], labels[idx]
        return
    workers = stream_workers(len(order))
    if workers == 0:
        for idx in chunks:
            yield images[idx], labels[idx]
        return
    report = PassReport(describe, len(order)) if describe else None
    for pixels_, labels_ in _decoded_ahead(images, labels, chunks, workers):
        if report:
            report.advance(len(labels_))
        yield pixels_, labels_


REPORT_EVERY_S = 15.0


class PassReport:
    """Status lines for one long pass: how many images are done, at most every REPORT_EVERY_S."""

    def __init__(self, describe: str, total: int, clock=time.monotonic):
        self.describe, self.total, self.clock = describe, total, clock
        self.done, self.started = 0, clock()
        self.last = self.started

    def advance(self, images: int) -> str | None:
        """Count ``images`` more; returns (and says) the line when one is due, else None."""
        self.done += images
        now = self.clock()
        if now - self.last < REPORT_EVERY_S or self.done >= self.total:
            return None
        self.last = now
        rate = self.done / max(now - self.started, 1e-9)
        line = (f"{self.describe}: {self.done:,} of {self.total:,} images ({self.done / self.total:.0%}), "
                f"about {(self.total - self.done) / rate:.0f} s left")
        say(line)
        return line


def _decoded_ahead(images: Images, labels: torch.Tensor, chunks: list[torch.Tensor], workers: int
                   ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``chunks`` decoded by ``workers`` spawned processes, at most two batches per worker ahead,
    yielded in order. A pool of our own rather than a multi-process DataLoader: the DataLoader's
    SIGCHLD and worker-signal machinery stays installed in the parent, and a process that had used
    it and then built every family was killed by a SIGSEGV in ``waitpid`` on a later subprocess.
    Spawned, never forked, so no torch or oneDNN thread state is copied. A worker's one-sentence
    error (an unreadable file) arrives as it was raised."""
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_hold, initargs=(images,)) as pool:
        pending: deque = deque()

        def oldest() -> tuple[torch.Tensor, torch.Tensor]:
            future, done = pending.popleft()
            try:
                return torch.from_numpy(future.result()), labels[done]
            except BrokenProcessPool as err:  # killed from outside: out of memory, most often
                raise QExportError(
                    "An image-decoding worker process died (killed from outside, most often for lack of memory); "
                    "free memory or run with fewer parallel jobs, then try again.") from err

        for idx in chunks:
            pending.append((pool.submit(_decode, idx.tolist()), idx))
            if len(pending) >= 2 * workers:
                yield oldest()
        while pending:
            yield oldest()


_HELD: list[Images] = []  # in a decoding worker: the images it serves (set once, by the pool's initializer)


def _hold(images: Images) -> None:
    """A decoding worker's start: keep the images, and leave Ctrl-C to the parent, which stops the pool."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _HELD[:] = [images]


def _decode(indices: list[int]) -> np.ndarray:
    return _HELD[0][indices].numpy()


def fingerprint_of(*image_sets: Images, labels: Sequence[torch.Tensor]) -> str:
    """sha256 over images (raw pixels, or the files' bytes) and labels."""
    digest = hashlib.sha256()
    for images, label in zip(image_sets, labels):
        images.digest(digest)
        digest.update(label.to(torch.int64).numpy().tobytes())
    return digest.hexdigest()

