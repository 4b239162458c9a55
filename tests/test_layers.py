"""The layers the tree promises (docs/ARCHITECTURE.md), checked by reading the imports.

helpers (qexport/: errors, fsutil, manifest, envinfo, hardware, ...)  ← exporter/, runtimes/  ← application
(qexport/: cli, pipeline, verify, pack, reports). A helper that imported a family or a runner would
pull torch into torch-free paths (verify of an ONNX file) and tie the bottom layer to the top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HELPERS = ("documents", "errors", "fsutil", "manifest", "envinfo", "hardware", "selection", "progress", "data", "models",
           "train", "signing")
UPPER = ("qexport.exporter", "qexport.runtimes", "exporter", "runtimes")
APPLICATION = ("qexport.cli", "qexport.pipeline", "qexport.verify", "qexport.pack", "qexport.report",
               "qexport.benchreport")


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions ('from qexport import runtimes' counts)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def imports_any(names: set[str], prefixes: tuple[str, ...]) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("helper", HELPERS)
def test_helpers_never_import_families_or_runtimes(helper):
    assert imports_any(imported_modules(ROOT / "qexport" / f"{helper}.py"), UPPER) == []


@pytest.mark.parametrize("folder", ["exporter", "runtimes"])
def test_middle_layer_never_imports_the_application(folder):
    for path in sorted((ROOT / folder).glob("*.py")):
        assert imports_any(imported_modules(path), APPLICATION) == [], path.name


def test_nothing_generic_is_installed_at_top_level():
    """exporter/ and runtimes/ install as qexport.exporter / qexport.runtimes (pyproject package-dir)."""
    import importlib.util

    assert importlib.util.find_spec("qexport.exporter") and importlib.util.find_spec("qexport.runtimes")
    for path in [p for folder in ("qexport", "exporter", "runtimes", "tests") for p in (ROOT / folder).glob("*.py")]:
        bare = imports_any(imported_modules(path), ("exporter", "runtimes"))
        assert bare == [], f"{path.relative_to(ROOT)} imports {bare} without the qexport namespace"
