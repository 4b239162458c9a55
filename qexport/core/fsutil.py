"""Atomic file writes and hashing.

Artifacts are handed to other teams, so a file that exists must be complete: everything is
written to a temporary sibling and renamed into place only once it is whole. A crash, a full
disk or Ctrl-C leaves at most a ``*.tmp`` file that is removed on the way out.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qexport.core.errors import QExportError


def ensure_writable_dir(path: Path) -> Path:
    """Create ``path`` if needed and prove we can write into it, before any long work starts."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe-", suffix=".tmp"):
            pass
    except OSError as err:
        raise QExportError(
            f"Cannot write to output directory {path} ({err.strerror or err}); "
            "choose another with --out or fix its permissions."
        ) from err
    return path


@contextlib.contextmanager
def atomic_path(final: Path, companions: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary path next to ``final``; rename it over ``final`` only on success.

    ``companions``: suffixes of files a writer puts beside the file it is given (an OpenVINO IR's
    ``.bin`` beside its ``.xml``); they are renamed into place with it, or removed with it."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # ".tmp-<random>-<name>": hidden, recognisable, and it keeps the real extension, which some
    # writers insist on (AOTInductor packages must end in .pt2).
    fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=".tmp-", suffix=f"-{final.name}")
    os.close(fd)
    tmp = Path(tmp_name)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; artifacts are meant to be shared
    moves = [(tmp.with_suffix(suffix), final.with_suffix(suffix)) for suffix in companions] + [(tmp, final)]
    try:
        yield tmp
        for source, target in moves:  # the main file last: once it exists, its companions do
            os.replace(source, target)
    except BaseException as err:
        for source, _ in moves:
            source.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise QExportError(f"Disk full while writing {final.name} in {final.parent}; nothing was kept -- "
                               "free some space (or choose another --out) and run again.") from err
        raise


def atomic_write_bytes(final: Path, data: bytes) -> None:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)


def atomic_write_json(final: Path, obj: Any) -> None:
    atomic_write_bytes(final, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
