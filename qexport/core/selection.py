"""Choosing families by name, the same way everywhere (`build --only`, `bench --only`)."""

from __future__ import annotations

from collections.abc import Iterable

from qexport.core.errors import QExportError, did_you_mean


def match_keys(requested: Iterable[str], available: Iterable[str], what: str = "artifact family") -> list[str]:
    """Keys named exactly or by prefix ('onnx' → every 'onnx-…'), in ``available``'s order.

    A name that matches nothing is an error with a suggestion: silently measuring or building
    nothing for a typo is worse than stopping.
    """
    keys = list(available)
    chosen: set[str] = set()
    for name in requested:
        matches = [k for k in keys if k == name] or [k for k in keys if k.startswith(name + "-")]
        if not matches:
            raise QExportError(f"Unknown {what} {name!r}{did_you_mean(name, keys)}; choose from {', '.join(keys)}.")
        chosen.update(matches)
    return [k for k in keys if k in chosen]
